//! The gateway connection: hello, identify or resume, heartbeats, dispatches, and the
//! reconnect policy (resume after a drop, identify after an invalid session, stop for
//! good on close codes only the user can fix).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nanoclaw_channel::{Backoff, ChannelCondition, ChannelHost};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::inbound;
use crate::rest::GatewayLookup;
use crate::{BotUser, ChannelInfo, Discord, INTENTS, lock};

/// Where the session is persisted (`router_state`).
const SESSION_KEY: &str = "discord:session";
/// Connecting and the first hello may take this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many chats' last message ids the session keeps, for catching up after a new
/// session (the most recently active ones).
const MAX_CURSORS: usize = 50;
/// Pages of 100 messages fetched per chat when catching up.
const CATCH_UP_PAGES: usize = 5;
/// Closing with a code other than 1000/1001 keeps the session resumable (Discord ends
/// sessions closed normally), so a restart picks up where it stopped.
const RESUMABLE_CLOSE: u16 = 4900;

/// The session to resume, persisted after every stored message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Session {
    id: Option<String>,
    resume_url: Option<String>,
    /// The last sequence number handled.
    seq: Option<u64>,
    /// Who we are: a resume gets no READY to say it again.
    me: Option<BotUser>,
    /// Channel id → the last message id stored from it, kept across sessions: what a new
    /// session (after an invalid one, or a long outage) fetches the missed messages from.
    last: BTreeMap<String, String>,
}

impl Session {
    fn to_state(&self) -> String {
        json!({
            "session_id": self.id, "resume_url": self.resume_url, "seq": self.seq,
            "bot_id": self.me.as_ref().map(|m| &m.id),
            "bot_name": self.me.as_ref().map(|m| &m.name),
            "last": self.last,
        })
        .to_string()
    }

    fn from_state(text: &str) -> Session {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        Session {
            id: v["session_id"].as_str().map(str::to_string),
            resume_url: v["resume_url"].as_str().map(str::to_string),
            seq: v["seq"].as_u64(),
            me: match (v["bot_id"].as_str(), v["bot_name"].as_str()) {
                (Some(id), Some(name)) => Some(BotUser {
                    id: id.to_string(),
                    name: name.to_string(),
                }),
                _ => None,
            },
            last: v["last"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Ends the gateway session; who we are and where each chat stopped stay.
    fn forget(&mut self) {
        self.id = None;
        self.resume_url = None;
        self.seq = None;
    }

    /// Notes that `message_id` of `channel` was stored.
    fn stored(&mut self, channel: &str, message_id: &str) {
        let newer = self
            .last
            .get(channel)
            .is_none_or(|old| snowflake_order(message_id, old).is_gt());
        if newer {
            self.last
                .insert(channel.to_string(), message_id.to_string());
        }
        while self.last.len() > MAX_CURSORS {
            let oldest = self
                .last
                .iter()
                .min_by(|a, b| snowflake_order(a.1, b.1))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.last.remove(&k),
                None => break,
            };
        }
    }

    fn resumable(&self) -> bool {
        self.id.is_some() && self.resume_url.is_some() && self.me.is_some()
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    /// Connect again at once (resuming if the session allows).
    Reconnect(String),
    /// Connect again after a backoff.
    Retry(String),
    /// Only the user can fix this: stop until restarted.
    Fatal(String),
    /// The session is gone: identify anew (after a backoff).
    Reidentify(String),
}

pub(crate) async fn run(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = match host.load_state(SESSION_KEY).await {
        Ok(Some(text)) => Session::from_state(&text),
        _ => Session::default(),
    };
    if let Some(me) = &session.me {
        *lock(&discord.me) = Some(me.clone());
    }
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ended = connect_once(discord, host, &mut session, &mut backoff, &mut shutdown).await;
        match ended {
            Ended::Shutdown => return,
            Ended::Fatal(reason) => {
                tracing::error!("discord: {reason}");
                discord.set_condition(ChannelCondition::NeedsAttention { reason });
                let _ = shutdown.wait_for(|s| *s).await;
                return;
            }
            Ended::Reconnect(reason) => {
                tracing::info!("discord: reconnecting: {reason}");
                discord.set_condition(ChannelCondition::Reconnecting { reason });
            }
            Ended::Retry(reason) | Ended::Reidentify(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "discord: {reason}; trying again in {:.1} s",
                    delay.as_secs_f64()
                );
                discord.set_condition(ChannelCondition::Reconnecting { reason });
                if !nanoclaw_channel::sleep_unless_shutdown(delay, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send_json(ws: &mut Socket, value: Value) -> Result<(), String> {
    ws.send(Frame::text(value.to_string()))
        .await
        .map_err(|e| format!("cannot write to the gateway: {e}"))
}

async fn connect_once(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let base = match (&discord.config.gateway_url, session.resumable()) {
        (_, true) => session.resume_url.clone().unwrap_or_default(),
        (Some(url), false) => url.clone(),
        (None, false) => match discord.rest.gateway_url().await {
            Ok(url) => url,
            Err(GatewayLookup::BadToken) => {
                return Ended::Fatal(bad_token("401 from GET /gateway/bot"));
            }
            Err(GatewayLookup::Failed(e)) => return Ended::Retry(e),
        },
    };
    // An explicit gateway (a test double, a proxy) is where resumes go too.
    let base = match (&discord.config.gateway_url, session.resumable()) {
        (Some(url), true) => url.clone(),
        _ => base,
    };
    let url = format!("{}/?v=10&encoding=json", base.trim_end_matches('/'));
    nanoclaw_channel::http::install_tls_provider();
    let connected = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Ended::Retry(format!("cannot connect to the gateway: {e}")),
        Err(_) => return Ended::Retry("connecting to the gateway timed out".into()),
    };
    let interval = match tokio::time::timeout(HANDSHAKE_TIMEOUT, next_json(&mut ws)).await {
        Ok(Ok(hello)) if hello["op"] == 10 => {
            hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250)
        }
        Ok(Ok(other)) => {
            return Ended::Retry(format!("the gateway did not say hello first ({other})"));
        }
        Ok(Err(ended)) => return ended,
        Err(_) => return Ended::Retry("the gateway said nothing after connecting".into()),
    };
    let greeting = if session.resumable() {
        json!({"op": 6, "d": {
            "token": discord.rest_token(),
            "session_id": session.id,
            "seq": session.seq,
        }})
    } else {
        json!({"op": 2, "d": {
            "token": discord.rest_token(),
            "intents": INTENTS,
            "properties": {"os": std::env::consts::OS, "browser": "nanoclaw", "device": "nanoclaw"},
        }})
    };
    if let Err(e) = send_json(&mut ws, greeting).await {
        return Ended::Retry(e);
    }
    // The first heartbeat after a random part of the interval (as Discord asks).
    let every = Duration::from_millis(interval.max(100));
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + nanoclaw_channel::jitter(every),
        every,
    );
    let mut acked = true;
    enum Step {
        Stop,
        Beat,
        Payload(Result<Value, Ended>),
    }
    loop {
        let step = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Step::Stop,
            _ = beat.tick() => Step::Beat,
            payload = next_json(&mut ws) => Step::Payload(payload),
        };
        let payload = match step {
            Step::Stop => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::from(RESUMABLE_CLOSE),
                        reason: "nanoclaw is stopping".into(),
                    }))
                    .await;
                return Ended::Shutdown;
            }
            Step::Beat => {
                if !acked {
                    return Ended::Reconnect(
                        "no heartbeat acknowledgement (the connection is dead)".into(),
                    );
                }
                acked = false;
                if let Err(e) = send_json(&mut ws, json!({"op": 1, "d": session.seq})).await {
                    return Ended::Retry(e);
                }
                continue;
            }
            Step::Payload(Ok(p)) => p,
            Step::Payload(Err(Ended::Reidentify(reason))) => {
                session.forget();
                save_session(host, session).await;
                return Ended::Retry(reason);
            }
            Step::Payload(Err(ended)) => return ended,
        };
        match payload["op"].as_u64() {
            Some(0) => {
                let seq = payload["s"].as_u64();
                // Not stored: resume from the last sequence handled, so Discord sends it
                // again.
                if let Err(e) = handle_dispatch(discord, host, session, &payload).await {
                    return Ended::Retry(e);
                }
                if seq.is_some() {
                    session.seq = seq;
                }
                if matches!(payload["t"].as_str(), Some("READY" | "RESUMED")) {
                    backoff.reset();
                }
            }
            Some(1) => {
                if let Err(e) = send_json(&mut ws, json!({"op": 1, "d": session.seq})).await {
                    return Ended::Retry(e);
                }
            }
            Some(7) => return Ended::Reconnect("the gateway asked to reconnect".into()),
            Some(9) => {
                if payload["d"].as_bool() != Some(true) {
                    session.forget();
                    save_session(host, session).await;
                }
                // Discord asks for a 1–5 s pause before identifying again.
                if !nanoclaw_channel::sleep_unless_shutdown(Duration::from_secs(2), shutdown).await
                {
                    return Ended::Shutdown;
                }
                return Ended::Reconnect("the gateway invalidated the session".into());
            }
            Some(11) => acked = true,
            _ => {}
        }
    }
}

/// The next JSON payload, or how the connection ended.
async fn next_json(ws: &mut Socket) -> Result<Value, Ended> {
    loop {
        let frame = match ws.next().await {
            None => return Err(Ended::Retry("the gateway closed the connection".into())),
            Some(Err(e)) => {
                return Err(Ended::Retry(format!("the gateway connection failed: {e}")));
            }
            Some(Ok(frame)) => frame,
        };
        match frame {
            Frame::Text(text) => match serde_json::from_str::<Value>(text.as_str()) {
                Ok(v) => return Ok(v),
                Err(e) => tracing::warn!("discord: skipping an unreadable gateway payload: {e}"),
            },
            Frame::Close(frame) => return Err(closed(frame)),
            // tungstenite answers pings itself.
            _ => {}
        }
    }
}

fn bad_token(detail: &str) -> String {
    format!(
        "Discord refused DISCORD_BOT_TOKEN ({detail}): copy it again from the Developer Portal \
         (your application → Bot → Reset Token), put it in .env and restart nanoclaw"
    )
}

/// What a close frame from Discord means for us.
fn closed(frame: Option<CloseFrame>) -> Ended {
    let Some(frame) = frame else {
        return Ended::Retry("the gateway closed the connection".into());
    };
    let code = u16::from(frame.code);
    let said = frame.reason.to_string();
    match code {
        4004 => Ended::Fatal(bad_token("close code 4004")),
        4014 => Ended::Fatal(
            "Discord refused the Message Content intent (close code 4014): in the Developer Portal, \
             your application → Bot → Privileged Gateway Intents, turn on MESSAGE CONTENT INTENT, \
             save, and restart nanoclaw"
                .into(),
        ),
        4010..=4013 => Ended::Fatal(format!(
            "Discord refused the connection (close code {code}: {said}); this needs a fix in nanoclaw, please report it"
        )),
        4007 | 4009 => Ended::Reidentify(format!(
            "the gateway ended the session (close code {code}); identifying again"
        )),
        _ => Ended::Retry(format!("the gateway closed the connection (code {code}: {said})")),
    }
}

async fn handle_dispatch(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    payload: &Value,
) -> Result<(), String> {
    let d = &payload["d"];
    match payload["t"].as_str() {
        Some("READY") => {
            let user = &d["user"];
            let me = BotUser {
                id: user["id"].as_str().unwrap_or("").to_string(),
                name: user["username"].as_str().unwrap_or("bot").to_string(),
            };
            session.id = d["session_id"].as_str().map(str::to_string);
            session.resume_url = d["resume_gateway_url"].as_str().map(str::to_string);
            session.seq = payload["s"].as_u64();
            session.me = Some(me.clone());
            tracing::info!(bot = %me.name, "discord connected");
            discord.set_condition(ChannelCondition::Connected {
                detail: format!("as {}", me.name),
            });
            *lock(&discord.me) = Some(me);
            save_session(host, session).await;
            catch_up(discord, host, session).await;
        }
        Some("RESUMED") => {
            tracing::info!("discord: session resumed");
            let name = discord.me().map(|m| m.name).unwrap_or_default();
            discord.set_condition(ChannelCondition::Connected {
                detail: format!("as {name}"),
            });
        }
        Some("GUILD_CREATE" | "GUILD_UPDATE") => learn_guild(discord, host, d).await,
        Some("CHANNEL_CREATE" | "CHANNEL_UPDATE" | "THREAD_CREATE" | "THREAD_UPDATE") => {
            learn_channel(discord, d, d["guild_id"].as_str());
        }
        Some("MESSAGE_CREATE") => {
            let stored = deliver_message(discord, host, session, d).await?;
            if stored {
                session.seq = payload["s"].as_u64().or(session.seq);
                save_session(host, session).await;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Stores a message (from the gateway or fetched when catching up); `true` if it was
/// one to store.
async fn deliver_message(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    d: &Value,
) -> Result<bool, String> {
    let (Some(id), Some(channel), true) = (
        d["id"].as_str(),
        d["channel_id"].as_str(),
        d["author"]["id"].is_string(),
    ) else {
        // Not its content: logs hold no chat text.
        tracing::warn!("discord: skipping a message without an id, channel or author");
        return Ok(false);
    };
    let (id, channel) = (id.to_string(), channel.to_string());
    let known = lock(&discord.channels).contains_key(&channel);
    // A guild channel first seen in a message (a thread, a channel made since), or a
    // message fetched over REST, which says nothing of its guild: ask once.
    if !known {
        // Asked once: a failure leaves what the message said.
        let info = discord
            .rest
            .channel(&channel)
            .await
            .unwrap_or_else(|| serde_json::json!({"id": channel}));
        learn_channel(discord, &info, d["guild_id"].as_str());
    }
    let guild = lock(&discord.channels)
        .get(&channel)
        .and_then(|c| c.guild_id.clone());
    let with_guild;
    let d = match guild {
        Some(guild) if !d["guild_id"].is_string() => {
            let mut copy = d.clone();
            copy["guild_id"] = Value::String(guild);
            with_guild = copy;
            &with_guild
        }
        _ => d,
    };
    let Some(mut inbound) = inbound::read(d, discord.me().as_ref(), discord.chat_name(&channel))
    else {
        return Ok(false);
    };
    if inbound.addresses_bot {
        let trigger = host
            .trigger_for(&inbound.message.chat_jid)
            .await
            .unwrap_or_else(|| format!("@{}", discord.config.assistant_name));
        let content = &inbound.message.content;
        if !content.to_lowercase().starts_with(&trigger.to_lowercase()) {
            inbound.message.content = format!("{trigger} {content}").trim_end().to_string();
        }
    }
    host.deliver(inbound.chat, inbound.message).await?;
    session.stored(&channel, &id);
    Ok(true)
}

/// A new session replays nothing of the old one: fetch what each chat got since its last
/// stored message (the store ignores any it already has).
async fn catch_up(discord: &Arc<Discord>, host: &Arc<dyn ChannelHost>, session: &mut Session) {
    let cursors: Vec<(String, String)> = session
        .last
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut caught = 0usize;
    for (channel, mut after) in cursors {
        for _ in 0..CATCH_UP_PAGES {
            let page = match discord.rest.messages_after(&channel, &after).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!("discord: cannot fetch the messages missed in {channel}: {e}");
                    break;
                }
            };
            let full = page.len() >= crate::rest::PAGE;
            for m in &page {
                if let Some(id) = m["id"].as_str() {
                    after = id.to_string();
                }
                match deliver_message(discord, host, session, m).await {
                    Ok(true) => caught += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("discord: cannot store a missed message: {e}");
                        return;
                    }
                }
            }
            if !full {
                break;
            }
        }
    }
    if caught > 0 {
        tracing::info!("discord: fetched {caught} messages sent while disconnected");
        save_session(host, session).await;
    }
}

/// Snowflakes are decimal numbers that grow with time.
pub(crate) fn snowflake_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

async fn save_session(host: &Arc<dyn ChannelHost>, session: &Session) {
    if let Err(e) = host.save_state(SESSION_KEY, &session.to_state()).await {
        tracing::warn!("discord: cannot save the gateway session: {e}");
    }
}

/// Remembers a guild's name and channels, and tells the host about its text channels
/// (so main can see and register them).
async fn learn_guild(discord: &Discord, host: &Arc<dyn ChannelHost>, d: &Value) {
    let Some(guild_id) = d["id"].as_str() else {
        return;
    };
    if let Some(name) = d["name"].as_str() {
        lock(&discord.guilds).insert(guild_id.to_string(), name.to_string());
    }
    for list in ["channels", "threads"] {
        for channel in d[list].as_array().into_iter().flatten() {
            learn_channel(discord, channel, Some(guild_id));
            // Text channels, announcement channels and threads take messages.
            if matches!(channel["type"].as_u64(), Some(0 | 5 | 10 | 11 | 12))
                && let Some(id) = channel["id"].as_str()
            {
                let chat = nanoclaw_channel::ChatMeta {
                    jid: format!("{}{id}", crate::PREFIX),
                    name: discord.chat_name(id),
                    timestamp: nanoclaw_channel::time::now(),
                    channel: Some("discord".into()),
                    is_group: Some(true),
                };
                if let Err(e) = host.chat_seen(chat).await {
                    tracing::debug!("discord: cannot record a channel: {e}");
                }
            }
        }
    }
}

fn learn_channel(discord: &Discord, channel: &Value, guild_id: Option<&str>) {
    let Some(id) = channel["id"].as_str() else {
        return;
    };
    let info = ChannelInfo {
        name: channel["name"].as_str().map(str::to_string),
        guild_id: channel["guild_id"]
            .as_str()
            .or(guild_id)
            .map(str::to_string),
    };
    lock(&discord.channels).insert(id.to_string(), info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_survive_the_state_round_trip() {
        let s = Session {
            id: Some("abc".into()),
            resume_url: Some("wss://resume".into()),
            seq: Some(42),
            me: Some(BotUser {
                id: "900".into(),
                name: "andy-bot".into(),
            }),
            last: BTreeMap::from([("42".to_string(), "1001".to_string())]),
        };
        assert_eq!(Session::from_state(&s.to_state()), s);
        assert!(s.resumable());
        assert_eq!(Session::from_state("garbage"), Session::default());
    }

    #[test]
    fn a_new_session_keeps_where_each_chat_stopped() {
        let mut s = Session {
            id: Some("abc".into()),
            resume_url: Some("wss://resume".into()),
            seq: Some(42),
            ..Session::default()
        };
        s.stored("42", "999");
        s.stored("42", "1000");
        s.stored("42", "998");
        assert_eq!(s.last["42"], "1000", "only ever forward, by number");
        s.forget();
        assert!(!s.resumable() && s.seq.is_none());
        assert_eq!(s.last["42"], "1000");
        for i in 0..MAX_CURSORS + 5 {
            s.stored(&format!("c{i}"), &format!("{}", 2000 + i));
        }
        assert_eq!(s.last.len(), MAX_CURSORS);
        assert!(
            !s.last.contains_key("42"),
            "the least recently active chat goes first"
        );
    }

    #[test]
    fn close_codes_the_user_must_fix_stop_the_retries() {
        let frame = |code: u16| {
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "x".into(),
            })
        };
        match closed(frame(4004)) {
            Ended::Fatal(r) => assert!(r.contains("Reset Token"), "{r}"),
            other => panic!("{other:?}"),
        }
        match closed(frame(4014)) {
            Ended::Fatal(r) => assert!(r.contains("MESSAGE CONTENT INTENT"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(closed(frame(4000)), Ended::Retry(_)));
        assert!(matches!(closed(None), Ended::Retry(_)));
    }
}
