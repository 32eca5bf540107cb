//! The Socket Mode connection: `auth.test`, `apps.connections.open`, the WebSocket with
//! its `hello`, envelopes (each acknowledged once its message is stored), `disconnect`
//! messages, pings to notice a dead connection, catching up on each registered chat's
//! history after a gap, and the reconnect policy of [`Reconnects`] (at once after a
//! requested refresh, with backoff after failures, never for what only the user can fix).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_channel::catch_up::{self, HistoryError, Page};
use nanoclaw_channel::{ChannelCondition, ChannelHost, ChatMeta, Message, Outcome, Reconnects};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::api::ApiError;
use crate::inbound::{self, Read};
use crate::{BotUser, Slack, lock};

/// Connecting and the `hello` may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A ping this often; no frame at all until the next one means the connection is dead.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Looking up the names in one message may take this long before the ids stand in
/// (the envelope must be acknowledged within 3 s).
const NAME_BUDGET: Duration = Duration::from_millis(1500);
/// Mentions looked up per message at most (the rest show as ids).
const MAX_LOOKUPS: usize = 10;
/// Where each registered chat's stored messages stop (`router_state`).
pub(crate) const CURSORS_KEY: &str = "slack:cursors";
/// History pages (of 200) fetched per chat when catching up.
const CATCH_UP_PAGES: usize = 5;

pub(crate) async fn run(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(Some(text)) = host.load_state(CURSORS_KEY).await {
        *lock(&slack.cursors) = serde_json::from_str(&text).unwrap_or_default();
    }
    let mut reconnects = Reconnects::new("slack");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let outcome = connect_once(slack, host, &mut shutdown).await;
        let go_on = reconnects
            .after(
                outcome,
                started.elapsed(),
                |c| slack.set_condition(c),
                &mut shutdown,
            )
            .await;
        if !go_on {
            return;
        }
    }
}

fn bot_token_refused(e: &ApiError) -> String {
    format!(
        "Slack refused SLACK_BOT_TOKEN ({e}): copy the Bot User OAuth Token (xoxb-…) again from \
         your app's page → OAuth & Permissions, put it in .env and restart nanoclaw"
    )
}

fn app_token_refused(e: &ApiError) -> String {
    format!(
        "Slack refused SLACK_APP_TOKEN ({e}): on your app's page → Basic Information → \
         App-Level Tokens, generate a token with the connections:write scope (xapp-…), put it \
         in .env and restart nanoclaw"
    )
}

/// What a failed call before connecting means for the connection.
fn failed(what: &str, e: ApiError, refused: fn(&ApiError) -> String) -> Outcome {
    match e {
        e if e.is_auth() => Outcome::Fatal(refused(&e)),
        ApiError::RateLimited(wait) => Outcome::Wait(wait, format!("{what} is rate limited")),
        e => Outcome::Retry(format!("{what} failed: {e}")),
    }
}

async fn save_cursors(slack: &Slack, host: &Arc<dyn ChannelHost>) {
    let text = serde_json::to_string(&*lock(&slack.cursors)).unwrap_or_default();
    if let Err(e) = host.save_state(CURSORS_KEY, &text).await {
        tracing::warn!("slack: cannot save where each chat stopped: {e}");
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_once(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    if slack.me().is_none() {
        match slack.api.call("auth.test", &slack.bot_token, &[]).await {
            Ok(v) => {
                let Some(user_id) = v["user_id"].as_str() else {
                    return Outcome::Retry("auth.test did not say who the bot is".into());
                };
                *lock(&slack.me) = Some(BotUser {
                    user_id: user_id.to_string(),
                    bot_id: v["bot_id"].as_str().map(str::to_string),
                    name: v["user"].as_str().unwrap_or("bot").to_string(),
                    team: v["team"].as_str().map(str::to_string),
                });
            }
            Err(e) => return failed("auth.test", e, bot_token_refused),
        }
    }
    let url = match slack
        .api
        .call("apps.connections.open", &slack.app_token, &[])
        .await
    {
        Ok(v) => match v["url"].as_str() {
            Some(url) => url.to_string(),
            None => return Outcome::Retry("apps.connections.open gave no URL".into()),
        },
        Err(e) => return failed("apps.connections.open", e, app_token_refused),
    };
    nanoclaw_channel::http::install_tls_provider();
    let mut ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    {
        // The URL carries a one-time ticket: never logged.
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            return Outcome::Retry(format!("cannot open the Socket Mode connection: {e}"));
        }
        Err(_) => return Outcome::Retry("opening the Socket Mode connection timed out".into()),
    };
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = true;
    let mut said_hello = false;
    let hello_by = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(hello_by);
    // Catching up runs beside the connection, so envelopes are acknowledged meanwhile.
    let (caught_tx, mut caught_rx) = mpsc::unbounded_channel();
    let mut _catching: Option<catch_up::Task> = None;
    enum Step {
        Stop,
        NoHello,
        Ping,
        Caught(catch_up::Event),
        Frame(Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>),
    }
    loop {
        let step = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Step::Stop,
            _ = &mut hello_by, if !said_hello => Step::NoHello,
            _ = ping.tick() => Step::Ping,
            Some(event) = caught_rx.recv() => Step::Caught(event),
            frame = ws.next() => Step::Frame(frame),
        };
        let frame = match step {
            Step::Stop => {
                let _ = ws.close(None).await;
                return Outcome::Shutdown;
            }
            Step::NoHello => return Outcome::Retry("Slack said no hello after connecting".into()),
            Step::Ping => {
                if !heard {
                    return Outcome::Reconnect(
                        "nothing heard from Slack (the connection is dead)".into(),
                    );
                }
                heard = false;
                if let Err(e) = ws.send(Frame::Ping(Vec::new().into())).await {
                    return Outcome::Retry(format!("cannot write to Slack: {e}"));
                }
                continue;
            }
            Step::Caught(event) => {
                let done = matches!(event, catch_up::Event::Done { .. });
                lock(&slack.cursors).apply(&event);
                if done {
                    save_cursors(slack, host).await;
                }
                continue;
            }
            Step::Frame(frame) => frame,
        };
        heard = true;
        let text = match frame {
            None => return Outcome::Retry("Slack closed the connection".into()),
            Some(Err(e)) => {
                return Outcome::Retry(format!("the Socket Mode connection failed: {e}"));
            }
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Close(frame))) => {
                return Outcome::Retry(format!(
                    "Slack closed the connection ({})",
                    frame
                        .map(|f| format!("{}: {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "no reason".into())
                ));
            }
            // tungstenite answers pings itself.
            Some(Ok(_)) => continue,
        };
        let v: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("slack: skipping an unreadable Socket Mode message: {e}");
                continue;
            }
        };
        match v["type"].as_str() {
            Some("hello") => {
                said_hello = true;
                let detail = match slack.me() {
                    Some(BotUser {
                        name,
                        team: Some(team),
                        ..
                    }) => format!("as {name} in {team}"),
                    Some(me) => format!("as {}", me.name),
                    None => String::new(),
                };
                tracing::info!("slack connected {detail}");
                slack.set_condition(ChannelCondition::Connected { detail });
                // Whatever Slack gave up redelivering while we were away.
                let todo = lock(&slack.cursors).begin();
                if !todo.is_empty() {
                    save_cursors(slack, host).await;
                    let history = Arc::new(SlackHistory {
                        slack: Arc::clone(slack),
                        host: Arc::clone(host),
                    });
                    _catching = Some(catch_up::Task(tokio::spawn(catch_up::run(
                        "slack",
                        history,
                        todo,
                        caught_tx.clone(),
                    ))));
                }
                continue;
            }
            Some("disconnect") => {
                let reason = v["reason"].as_str().unwrap_or("unknown");
                match reason {
                    // Slack will ask for the refresh in a few seconds.
                    "warning" => continue,
                    "link_disabled" => {
                        let _ = ws.close(None).await;
                        return Outcome::Fatal(
                            "Slack turned Socket Mode off for this app (link_disabled): on your \
                             app's page → Socket Mode, enable it, then restart nanoclaw"
                                .into(),
                        );
                    }
                    "refresh_requested" => {
                        let _ = ws.close(None).await;
                        return Outcome::Reconnect("Slack asked for a refresh".into());
                    }
                    "too_many_websockets" => {
                        let _ = ws.close(None).await;
                        return Outcome::Retry(
                            "Slack refused another connection (too_many_websockets): is another \
                             program using this app's Socket Mode?"
                                .into(),
                        );
                    }
                    other => {
                        let _ = ws.close(None).await;
                        return Outcome::Retry(format!("Slack disconnected ({other})"));
                    }
                }
            }
            _ => {}
        }
        let Some(envelope_id) = v["envelope_id"].as_str().map(str::to_string) else {
            tracing::warn!("slack: skipping a Socket Mode message without an envelope_id");
            continue;
        };
        let handled = match v["type"].as_str() {
            Some("events_api") => handle_event(slack, host, &v["payload"]).await,
            other => {
                tracing::debug!("slack: acknowledging an envelope of type {other:?} unhandled");
                Ok(())
            }
        };
        match handled {
            Ok(()) => {
                if let Err(e) = send_ack(&mut ws, &envelope_id).await {
                    return Outcome::Retry(e);
                }
            }
            // Not acknowledged: Slack delivers it again.
            Err(e) => {
                tracing::warn!("slack: cannot store a message, leaving it to Slack's retry: {e}")
            }
        }
    }
}

async fn send_ack(ws: &mut Socket, envelope_id: &str) -> Result<(), String> {
    ws.send(Frame::text(json!({"envelope_id": envelope_id}).to_string()))
        .await
        .map_err(|e| format!("cannot acknowledge to Slack: {e}"))
}

/// Stores the message an Events API payload carries, if any.
async fn handle_event(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    payload: &Value,
) -> Result<(), String> {
    if payload["type"].as_str() != Some("event_callback") {
        tracing::debug!("slack: skipping a payload that is not an event_callback");
        return Ok(());
    }
    if let Some((chat, ts)) = store_message(slack, host, &payload["event"]).await? {
        lock(&slack.cursors).stored(&chat, &ts);
        save_cursors(slack, host).await;
    }
    Ok(())
}

/// Stores a message event (live, or from the history when catching up). Returns its
/// channel and ts when it was stored in a registered chat (whose cursor is kept).
async fn store_message(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    event: &Value,
) -> Result<Option<(String, String)>, String> {
    let Some(me) = slack.me() else {
        return Err("the bot is not known yet".into());
    };
    let e = match inbound::read(event, &me.user_id) {
        Read::Message(e) => e,
        Read::NotInput(why) => {
            tracing::debug!("slack: not user input: {why}");
            return Ok(None);
        }
        Read::Malformed(why) => {
            // Not its content: logs hold no chat text.
            tracing::warn!("slack: skipping {why}");
            return Ok(None);
        }
    };
    let lookups = async {
        let mut names = HashMap::new();
        for id in inbound::mentioned_users(&e.text)
            .into_iter()
            .filter(|id| *id != me.user_id)
            .take(MAX_LOOKUPS)
        {
            let name = slack.user_name(&id).await;
            names.insert(id, name);
        }
        let sender = slack.user_name(&e.user).await;
        let conversation = slack.conversation(&e.channel).await;
        (names, sender, conversation)
    };
    let (names, sender_name, conversation) = match tokio::time::timeout(NAME_BUDGET, lookups).await
    {
        Ok(found) => found,
        Err(_) => (HashMap::new(), e.user.clone(), Default::default()),
    };
    let decoded = inbound::decode(&e.text, &names, &me.user_id);
    let mut content = decoded.text;
    let files: Vec<String> = e
        .files
        .iter()
        .map(|f| format!("[File: {}]", f.name))
        .collect();
    if !files.is_empty() {
        content = [content, files.join(" ")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let jid = format!("{}{}", crate::PREFIX, e.channel);
    let trigger = host.trigger_for(&jid).await;
    if decoded.addresses_bot {
        let trigger = trigger
            .clone()
            .unwrap_or_else(|| format!("@{}", slack.config.assistant_name));
        content = nanoclaw_channel::text::with_trigger(&content, &trigger);
    }
    let is_im = match e.channel_type.as_deref() {
        Some(t) => t == "im",
        None => conversation.is_im,
    };
    let name = if is_im {
        Some(format!("DM with {sender_name}"))
    } else {
        conversation.name.map(|n| match &me.team {
            Some(team) => format!("{team} #{n}"),
            None => format!("#{n}"),
        })
    };
    let timestamp = inbound::timestamp(&e.ts).unwrap_or_else(nanoclaw_channel::time::now);
    let chat = ChatMeta {
        jid: jid.clone(),
        name,
        timestamp: timestamp.clone(),
        channel: Some("slack".into()),
        is_group: Some(!is_im),
    };
    let mut message = Message {
        id: e.ts.clone(),
        chat_jid: jid,
        sender: e.user.clone(),
        sender_name,
        content,
        timestamp,
        is_from_me: false,
        is_bot_message: false,
        flagged: None,
    };
    if !e.files.is_empty() {
        slack
            .save_files(host.as_ref(), &e.files, &mut message)
            .await;
    }
    host.deliver(chat, message).await?;
    slack.saw_message(&e.channel, &e.ts);
    Ok(trigger.map(|_| (e.channel, e.ts)))
}

/// A channel's history (`conversations.history`), for catching up.
struct SlackHistory {
    slack: Arc<Slack>,
    host: Arc<dyn ChannelHost>,
}

#[async_trait]
impl catch_up::History for SlackHistory {
    type Item = Value;

    /// Everything after `after` (Slack pages from the newest back, so all pages are
    /// read, then given oldest first).
    async fn page(&self, chat: &str, after: &str) -> Result<Page<Value>, HistoryError> {
        let mut messages: Vec<Value> = Vec::new();
        let mut cursor = String::new();
        let mut more = false;
        for _ in 0..CATCH_UP_PAGES {
            let mut params = vec![("channel", chat), ("oldest", after), ("limit", "200")];
            if !cursor.is_empty() {
                params.push(("cursor", cursor.as_str()));
            }
            let v = match self
                .slack
                .api
                .call("conversations.history", &self.slack.bot_token, &params)
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_transient() => return Err(HistoryError::Failed(e.to_string())),
                Err(e) => {
                    return Err(HistoryError::Gone(format!(
                        "{e} (the app needs the *:history scopes and to be in the channel)"
                    )));
                }
            };
            messages.extend(v["messages"].as_array().cloned().unwrap_or_default());
            more = v["has_more"] == true;
            match v["response_metadata"]["next_cursor"].as_str() {
                Some(next) if more && !next.is_empty() => cursor = next.to_string(),
                _ => break,
            }
        }
        if more {
            tracing::warn!(
                "slack: more than {} messages were missed in {chat}; the oldest are not fetched",
                CATCH_UP_PAGES * 200
            );
        }
        messages.sort_by(|a, b| {
            catch_up::id_order(
                a["ts"].as_str().unwrap_or(""),
                b["ts"].as_str().unwrap_or(""),
            )
        });
        Ok(Page {
            items: messages
                .into_iter()
                .filter_map(|mut m| {
                    let ts = m["ts"].as_str()?.to_string();
                    // History entries do not name their channel.
                    m["channel"] = Value::String(chat.to_string());
                    Some((ts, m))
                })
                .collect(),
            more: false,
        })
    }

    async fn store(&self, _chat: &str, item: &Value) -> Result<(), String> {
        store_message(&self.slack, &self.host, item)
            .await
            .map(|_| ())
    }
}
