//! The Socket Mode connection: `auth.test`, `apps.connections.open`, the WebSocket with
//! its `hello`, envelopes (each acknowledged once its message is stored), `disconnect`
//! messages, pings to notice a dead connection, and the reconnect policy (at once after
//! a requested refresh, with backoff after failures, never for tokens only the user can
//! fix).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nanoclaw_channel::{Backoff, ChannelCondition, ChannelHost, ChatMeta, Message};
use serde_json::{Value, json};
use tokio::sync::watch;
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

#[derive(Debug)]
enum Ended {
    Shutdown,
    /// Connect again at once (Slack asked for a refresh).
    Reconnect(String),
    /// Connect again after a backoff.
    Retry(String),
    /// Only the user can fix this: stop until restarted.
    Fatal(String),
}

pub(crate) async fn run(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        if *shutdown.borrow() {
            return;
        }
        match connect_once(slack, host, &mut backoff, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Fatal(reason) => {
                tracing::error!("slack: {reason}");
                slack.set_condition(ChannelCondition::NeedsAttention { reason });
                let _ = shutdown.wait_for(|s| *s).await;
                return;
            }
            Ended::Reconnect(reason) => {
                tracing::info!("slack: reconnecting: {reason}");
                slack.set_condition(ChannelCondition::Reconnecting { reason });
            }
            Ended::Retry(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "slack: {reason}; trying again in {:.1} s",
                    delay.as_secs_f64()
                );
                slack.set_condition(ChannelCondition::Reconnecting { reason });
                if !nanoclaw_channel::sleep_unless_shutdown(delay, &mut shutdown).await {
                    return;
                }
            }
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_once(
    slack: &Arc<Slack>,
    host: &Arc<dyn ChannelHost>,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    if slack.me().is_none() {
        match slack.api.call("auth.test", &slack.bot_token, &[]).await {
            Ok(v) => {
                let Some(user_id) = v["user_id"].as_str() else {
                    return Ended::Retry("auth.test did not say who the bot is".into());
                };
                *lock(&slack.me) = Some(BotUser {
                    user_id: user_id.to_string(),
                    bot_id: v["bot_id"].as_str().map(str::to_string),
                    name: v["user"].as_str().unwrap_or("bot").to_string(),
                    team: v["team"].as_str().map(str::to_string),
                });
            }
            Err(e) if e.is_auth() => return Ended::Fatal(bot_token_refused(&e)),
            Err(e) => return Ended::Retry(format!("auth.test failed: {e}")),
        }
    }
    let url = match slack
        .api
        .call("apps.connections.open", &slack.app_token, &[])
        .await
    {
        Ok(v) => match v["url"].as_str() {
            Some(url) => url.to_string(),
            None => return Ended::Retry("apps.connections.open gave no URL".into()),
        },
        Err(e) if e.is_auth() => return Ended::Fatal(app_token_refused(&e)),
        Err(e) => return Ended::Retry(format!("apps.connections.open failed: {e}")),
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
        Ok(Err(e)) => return Ended::Retry(format!("cannot open the Socket Mode connection: {e}")),
        Err(_) => return Ended::Retry("opening the Socket Mode connection timed out".into()),
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = true;
    let mut said_hello = false;
    let hello_by = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(hello_by);
    enum Step {
        Stop,
        NoHello,
        Ping,
        Frame(Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>),
    }
    loop {
        let step = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Step::Stop,
            _ = &mut hello_by, if !said_hello => Step::NoHello,
            _ = ping.tick() => Step::Ping,
            frame = ws.next() => Step::Frame(frame),
        };
        let frame = match step {
            Step::Stop => {
                let _ = ws.close(None).await;
                return Ended::Shutdown;
            }
            Step::NoHello => return Ended::Retry("Slack said no hello after connecting".into()),
            Step::Ping => {
                if !heard {
                    return Ended::Reconnect(
                        "nothing heard from Slack (the connection is dead)".into(),
                    );
                }
                heard = false;
                if let Err(e) = ws.send(Frame::Ping(Vec::new().into())).await {
                    return Ended::Retry(format!("cannot write to Slack: {e}"));
                }
                continue;
            }
            Step::Frame(frame) => frame,
        };
        heard = true;
        let text = match frame {
            None => return Ended::Retry("Slack closed the connection".into()),
            Some(Err(e)) => return Ended::Retry(format!("the Socket Mode connection failed: {e}")),
            Some(Ok(Frame::Text(text))) => text,
            Some(Ok(Frame::Close(frame))) => {
                return Ended::Retry(format!(
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
                backoff.reset();
                let me = slack.me();
                let detail = match me {
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
                continue;
            }
            Some("disconnect") => {
                let reason = v["reason"].as_str().unwrap_or("unknown");
                match reason {
                    // Slack will ask for the refresh in a few seconds.
                    "warning" => continue,
                    "link_disabled" => {
                        let _ = ws.close(None).await;
                        return Ended::Fatal(
                            "Slack turned Socket Mode off for this app (link_disabled): on your \
                             app's page → Socket Mode, enable it, then restart nanoclaw"
                                .into(),
                        );
                    }
                    _ => {
                        let _ = ws.close(None).await;
                        return Ended::Reconnect(format!("Slack asked to reconnect ({reason})"));
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
                    return Ended::Retry(e);
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
    let Some(me) = slack.me() else {
        return Err("the bot is not known yet".into());
    };
    let event = &payload["event"];
    let e = match inbound::read(event, &me.user_id) {
        Read::Message(e) => e,
        Read::NotInput(why) => {
            tracing::debug!("slack: not user input: {why}");
            return Ok(());
        }
        Read::Malformed(why) => {
            // Not its content: logs hold no chat text.
            tracing::warn!("slack: skipping {why}");
            return Ok(());
        }
    };
    let lookups = async {
        let mut names = HashMap::new();
        for id in inbound::mentioned_users(&e.text) {
            if id != me.user_id {
                let name = slack.user_name(&id).await;
                names.insert(id, name);
            }
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
    let files: Vec<String> = e.files.iter().map(|f| format!("[File: {f}]")).collect();
    if !files.is_empty() {
        content = [content, files.join(" ")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let jid = format!("{}{}", crate::PREFIX, e.channel);
    if decoded.addresses_bot {
        let trigger = host
            .trigger_for(&jid)
            .await
            .unwrap_or_else(|| format!("@{}", slack.config.assistant_name));
        if !content.to_lowercase().starts_with(&trigger.to_lowercase()) {
            content = format!("{trigger} {content}").trim_end().to_string();
        }
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
    let message = Message {
        id: e.ts.clone(),
        chat_jid: jid,
        sender: e.user.clone(),
        sender_name,
        content,
        timestamp,
        is_from_me: false,
        is_bot_message: false,
    };
    host.deliver(chat, message).await?;
    slack.saw_message(&e.channel, &e.ts);
    Ok(())
}
