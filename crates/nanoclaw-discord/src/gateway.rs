//! The gateway connection: hello, identify or resume, heartbeats, dispatches, catching
//! up after a new session, and the reconnect policy (resume after a drop, identify after
//! an invalid session within Discord's session budget, back off whenever connections do
//! not last, stop for good on close codes only the user can fix).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use nanoclaw_channel::catch_up::{self, Cursors, HistoryError, Page};
use nanoclaw_channel::{ChannelCondition, ChannelHost, Outcome, Reconnects};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
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
    /// Where each registered chat's stored messages stop, kept across sessions: what a
    /// new session (which replays nothing) fetches the missed messages from.
    cursors: Cursors,
}

impl Session {
    fn to_state(&self) -> String {
        json!({
            "session_id": self.id, "resume_url": self.resume_url, "seq": self.seq,
            "bot_id": self.me.as_ref().map(|m| &m.id),
            "bot_name": self.me.as_ref().map(|m| &m.name),
            "cursors": self.cursors,
        })
        .to_string()
    }

    fn from_state(text: &str) -> Session {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        Session {
            id: v["session_id"].as_str().map(str::to_string),
            // The token goes with a RESUME: never to a plain-text address elsewhere.
            resume_url: v["resume_url"]
                .as_str()
                .filter(|u| nanoclaw_channel::http::check_endpoint("resume_gateway_url", u).is_ok())
                .map(str::to_string),
            seq: v["seq"].as_u64(),
            me: match (v["bot_id"].as_str(), v["bot_name"].as_str()) {
                (Some(id), Some(name)) => Some(BotUser {
                    id: id.to_string(),
                    name: name.to_string(),
                }),
                _ => None,
            },
            cursors: serde_json::from_value(v["cursors"].clone()).unwrap_or_default(),
        }
    }

    /// Ends the gateway session; who we are and where each chat stopped stay.
    fn forget(&mut self) {
        self.id = None;
        self.resume_url = None;
        self.seq = None;
    }

    fn resumable(&self) -> bool {
        self.id.is_some() && self.resume_url.is_some() && self.me.is_some()
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    /// Connect again at once (resuming if the session allows), unless the connection
    /// was too short to trust that.
    Reconnect(String),
    /// Connect again after a backoff.
    Retry(String),
    /// Connect again after this long (Discord said when).
    Wait(Duration, String),
    /// The session is gone: identify anew (after a backoff).
    Reidentify(String),
    /// Only the user can fix this: stop until restarted.
    Fatal(String),
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
    let mut reconnects = Reconnects::new("discord");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let outcome = match connect_once(discord, host, &mut session, &mut shutdown).await {
            Ended::Shutdown => Outcome::Shutdown,
            Ended::Reconnect(r) => Outcome::Reconnect(r),
            Ended::Retry(r) | Ended::Reidentify(r) => Outcome::Retry(r),
            Ended::Wait(d, r) => Outcome::Wait(d, r),
            Ended::Fatal(r) => Outcome::Fatal(r),
        };
        let go_on = reconnects
            .after(
                outcome,
                started.elapsed(),
                |c| discord.set_condition(c),
                &mut shutdown,
            )
            .await;
        if !go_on {
            return;
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

/// Where to connect: the session's resume URL, or (for a new session, after asking
/// Discord how many it still allows today) the bot's gateway.
async fn gateway_for(discord: &Discord, session: &Session) -> Result<String, Ended> {
    let configured = discord.config.gateway_url.clone();
    if session.resumable() {
        // An explicit gateway (a test double, a proxy) is where resumes go too.
        return Ok(configured.unwrap_or_else(|| session.resume_url.clone().unwrap_or_default()));
    }
    match discord.rest.gateway_bot().await {
        Ok(bot) => {
            if bot.remaining == Some(0) {
                let wait = bot.reset_after.unwrap_or(Duration::from_secs(60));
                return Err(Ended::Wait(
                    wait,
                    "Discord allows this bot no more new sessions for now (session_start_limit)"
                        .into(),
                ));
            }
            Ok(configured.unwrap_or(bot.url))
        }
        Err(GatewayLookup::BadToken) => Err(Ended::Fatal(bad_token("401 from GET /gateway/bot"))),
        Err(GatewayLookup::Failed(e)) => configured.ok_or(Ended::Retry(e)),
    }
}

async fn connect_once(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let base = match gateway_for(discord, session).await {
        Ok(base) => base,
        Err(ended) => return ended,
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
            return Ended::Retry(format!(
                "the gateway did not say hello first (op {})",
                other["op"]
            ));
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
    let mut beat =
        tokio::time::interval_at(Instant::now() + nanoclaw_channel::jitter(every), every);
    // A stall (a slow store) must not fire two beats back to back and so look like a
    // missed acknowledgement.
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acked = true;
    // Catching up runs beside the connection, so heartbeats never wait for it.
    let (caught_tx, mut caught_rx) = mpsc::unbounded_channel();
    let mut _catching: Option<catch_up::Task> = None;
    enum Step {
        Stop,
        Beat,
        Caught(catch_up::Event),
        Payload(Result<Value, Ended>),
    }
    loop {
        let step = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Step::Stop,
            _ = beat.tick() => Step::Beat,
            Some(event) = caught_rx.recv() => Step::Caught(event),
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
            Step::Caught(event) => {
                session.cursors.apply(&event);
                if matches!(event, catch_up::Event::Done { .. }) {
                    save_session(host, session).await;
                }
                continue;
            }
            Step::Payload(Ok(p)) => p,
            Step::Payload(Err(Ended::Reidentify(reason))) => {
                session.forget();
                save_session(host, session).await;
                return Ended::Reidentify(reason);
            }
            Step::Payload(Err(ended)) => return ended,
        };
        match payload["op"].as_u64() {
            Some(0) => {
                let seq = payload["s"].as_u64();
                // Not stored: resume from the last sequence handled, so Discord sends it
                // again.
                let started = match handle_dispatch(discord, host, session, &payload).await {
                    Ok(s) => s,
                    Err(e) => return Ended::Retry(e),
                };
                if seq.is_some() {
                    session.seq = seq;
                }
                let todo: Vec<(String, String)> = match started {
                    Started::Nothing => Vec::new(),
                    // A new session replays nothing of the old one.
                    Started::NewSession => session.cursors.begin(),
                    // One cut short by a drop goes on.
                    Started::Resumed => session
                        .cursors
                        .pending
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                if !todo.is_empty() {
                    save_session(host, session).await;
                    let history = Arc::new(DiscordHistory {
                        discord: Arc::clone(discord),
                        host: Arc::clone(host),
                    });
                    _catching = Some(catch_up::Task(tokio::spawn(catch_up::run(
                        "discord",
                        history,
                        todo,
                        caught_tx.clone(),
                    ))));
                }
            }
            Some(1) => {
                if let Err(e) = send_json(&mut ws, json!({"op": 1, "d": session.seq})).await {
                    return Ended::Retry(e);
                }
            }
            Some(7) if session.resumable() => {
                return Ended::Reconnect("the gateway asked to reconnect".into());
            }
            Some(7) => return Ended::Retry("the gateway asked to reconnect before READY".into()),
            Some(9) => {
                if payload["d"].as_bool() != Some(true) {
                    session.forget();
                    save_session(host, session).await;
                }
                // Discord asks for a random 1–5 s pause before identifying again; the
                // backoff adds more if it keeps happening.
                let pause =
                    Duration::from_secs(1) + nanoclaw_channel::jitter(Duration::from_secs(4));
                if !nanoclaw_channel::sleep_unless_shutdown(pause, shutdown).await {
                    return Ended::Shutdown;
                }
                return Ended::Retry("the gateway invalidated the session".into());
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

/// What a dispatch started.
enum Started {
    Nothing,
    NewSession,
    Resumed,
}

async fn handle_dispatch(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    payload: &Value,
) -> Result<Started, String> {
    let d = &payload["d"];
    match payload["t"].as_str() {
        Some("READY") => {
            let user = &d["user"];
            let me = BotUser {
                id: user["id"].as_str().unwrap_or("").to_string(),
                name: user["username"].as_str().unwrap_or("bot").to_string(),
            };
            session.id = d["session_id"].as_str().map(str::to_string);
            session.resume_url = d["resume_gateway_url"]
                .as_str()
                .filter(|u| nanoclaw_channel::http::check_endpoint("resume_gateway_url", u).is_ok())
                .map(str::to_string);
            session.seq = payload["s"].as_u64();
            session.me = Some(me.clone());
            tracing::info!(bot = %me.name, "discord connected");
            discord.set_condition(ChannelCondition::Connected {
                detail: format!("as {}", me.name),
            });
            *lock(&discord.me) = Some(me);
            save_session(host, session).await;
            return Ok(Started::NewSession);
        }
        Some("RESUMED") => {
            tracing::info!("discord: session resumed");
            let name = discord.me().map(|m| m.name).unwrap_or_default();
            discord.set_condition(ChannelCondition::Connected {
                detail: format!("as {name}"),
            });
            return Ok(Started::Resumed);
        }
        Some("GUILD_CREATE" | "GUILD_UPDATE") => learn_guild(discord, host, d).await,
        Some("CHANNEL_CREATE" | "CHANNEL_UPDATE" | "THREAD_CREATE" | "THREAD_UPDATE") => {
            learn_channel(discord, d, d["guild_id"].as_str());
        }
        Some("MESSAGE_CREATE") => {
            if let Some((channel, id)) = deliver_message(discord, host, d).await? {
                session.cursors.stored(&channel, &id);
                session.seq = payload["s"].as_u64().or(session.seq);
                save_session(host, session).await;
            }
        }
        _ => {}
    }
    Ok(Started::Nothing)
}

/// Snowflakes: decimal, at most 20 digits.
fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Stores a message (from the gateway or fetched when catching up). Returns its channel
/// and id when it was stored in a registered chat (whose cursor is kept).
async fn deliver_message(
    discord: &Arc<Discord>,
    host: &Arc<dyn ChannelHost>,
    d: &Value,
) -> Result<Option<(String, String)>, String> {
    let (Some(id), Some(channel), true) = (
        d["id"].as_str().filter(|s| is_snowflake(s)),
        d["channel_id"].as_str().filter(|s| is_snowflake(s)),
        d["author"]["id"].is_string(),
    ) else {
        // Not its content: logs hold no chat text.
        tracing::warn!("discord: skipping a message without a valid id, channel or author");
        return Ok(None);
    };
    let (id, channel) = (id.to_string(), channel.to_string());
    let known = lock(&discord.channels).contains_key(&channel);
    if !known {
        // Asked once (a thread, a channel made since, a message fetched over REST, which
        // says nothing of its guild); a failure leaves what the message said.
        let info = discord
            .rest
            .channel(&channel)
            .await
            .unwrap_or_else(|| json!({"id": channel}));
        learn_channel(discord, &info, d["guild_id"].as_str());
    }
    let guild = lock(&discord.channels)
        .get(&channel)
        .and_then(|c| c.guild_id.clone());
    if let Some(guild) = &guild
        && !lock(&discord.guilds).contains_key(guild)
    {
        // After a resume no GUILD_CREATE says the guild's name.
        let name = discord.rest.guild_name(guild).await.unwrap_or_default();
        lock(&discord.guilds).insert(guild.clone(), name);
    }
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
        return Ok(None);
    };
    let jid = inbound.message.chat_jid.clone();
    let trigger = host.trigger_for(&jid).await;
    if inbound.addresses_bot {
        let trigger = trigger
            .clone()
            .unwrap_or_else(|| format!("@{}", discord.config.assistant_name));
        inbound.message.content =
            nanoclaw_channel::text::with_trigger(&inbound.message.content, &trigger);
    }
    save_attachments(discord, host.as_ref(), d, &mut inbound.message).await;
    host.deliver(inbound.chat, inbound.message).await?;
    Ok(trigger.map(|_| (channel, id)))
}

/// Largest attachment saved (what Discord lets most users upload).
const MAX_ATTACHMENT: u64 = 25 << 20;
/// Attachments of one message saved at most (Discord allows 10).
const MAX_ATTACHMENTS: usize = 10;

/// Saves a message's attachments into the group's inbox and names them in it, so the
/// agent can open them (and see photos). Fetched from their CDN URL without the bot
/// token, only over https (or from this machine), and not again for a message seen
/// before.
async fn save_attachments(
    discord: &Discord,
    host: &dyn ChannelHost,
    d: &Value,
    message: &mut nanoclaw_channel::Message,
) {
    use nanoclaw_channel::files;
    let Some(list) = d["attachments"].as_array().filter(|l| !l.is_empty()) else {
        return;
    };
    if !files::wanted(host, message).await {
        return;
    }
    let mut notes = Vec::new();
    for file in list.iter().take(MAX_ATTACHMENTS) {
        let name = file["filename"].as_str().unwrap_or("file");
        let size = file["size"].as_u64().unwrap_or(0);
        let note = if size > MAX_ATTACHMENT {
            Some(files::too_large(name, size, MAX_ATTACHMENT, "larger than"))
        } else if let Some(refused) = files::refused(host, &message.chat_jid, name, size).await {
            Some(refused)
        } else {
            let fetched = match file["url"].as_str() {
                Some(url) => match nanoclaw_channel::http::check_endpoint("its URL", url) {
                    Ok(()) => {
                        files::fetch_capped(discord.rest.client().get(url), MAX_ATTACHMENT).await
                    }
                    Err(e) => Err(e),
                },
                None => Err("it has no URL".to_string()),
            };
            files::save(host, "discord", &message.chat_jid, name, fetched).await
        };
        notes.extend(note);
    }
    if !notes.is_empty() {
        message.content = format!("{}\n{}", message.content, notes.join("\n"));
    }
}

/// Discord's message history, for catching up.
struct DiscordHistory {
    discord: Arc<Discord>,
    host: Arc<dyn ChannelHost>,
}

#[async_trait]
impl catch_up::History for DiscordHistory {
    type Item = Value;

    async fn page(&self, chat: &str, after: &str) -> Result<Page<Value>, HistoryError> {
        let messages = self.discord.rest.messages_after(chat, after).await?;
        let more = messages.len() >= crate::rest::PAGE;
        Ok(Page {
            items: messages
                .into_iter()
                .filter_map(|m| Some((m["id"].as_str()?.to_string(), m)))
                .collect(),
            more,
        })
    }

    async fn store(&self, _chat: &str, item: &Value) -> Result<(), String> {
        deliver_message(&self.discord, &self.host, item)
            .await
            .map(|_| ())
    }
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
                && let Some(id) = channel["id"].as_str().filter(|s| is_snowflake(s))
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
        let mut s = Session {
            id: Some("abc".into()),
            resume_url: Some("wss://resume".into()),
            seq: Some(42),
            me: Some(BotUser {
                id: "900".into(),
                name: "andy-bot".into(),
            }),
            cursors: Cursors::default(),
        };
        s.cursors.stored("42", "1001");
        s.cursors.begin();
        assert_eq!(Session::from_state(&s.to_state()), s);
        assert!(s.resumable());
        assert_eq!(Session::from_state("garbage"), Session::default());
        s.forget();
        assert!(!s.resumable() && s.seq.is_none());
        assert_eq!(
            s.cursors.last["42"], "1001",
            "where each chat stopped stays"
        );
        // A resume URL that would send the token in clear text is not used.
        let mut plain = Session::from_state(&s.to_state());
        plain.resume_url = Some("ws://gateway.example".into());
        plain.id = Some("abc".into());
        assert!(!Session::from_state(&plain.to_state()).resumable());
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
        assert!(matches!(closed(frame(4009)), Ended::Reidentify(_)));
        assert!(matches!(closed(frame(4000)), Ended::Retry(_)));
        assert!(matches!(closed(None), Ended::Retry(_)));
        assert!(is_snowflake("200000000000000001") && !is_snowflake("2:1") && !is_snowflake(""));
    }
}
