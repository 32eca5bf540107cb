//! Discord's REST API: the gateway URL, messages, typing, and channel names. The token
//! travels only in the `Authorization` header; no error message carries it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanoclaw_channel::{ChannelError, SendRetry};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Messages per page when catching up (Discord's maximum).
pub(crate) const PAGE: usize = 100;
/// One REST call may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Discord error codes that mean a reply can never be sent to that channel.
const NEVER_CODES: [i64; 6] = [
    10003, // Unknown Channel
    10008, // Unknown Message (a reply to a deleted one)
    50001, // Missing Access
    50007, // Cannot send messages to this user
    50013, // Missing Permissions
    50083, // Thread is archived
];

#[derive(Clone)]
pub(crate) struct Rest {
    /// `{api_url}/api/v10`.
    base: String,
    token: String,
    authorization: reqwest::header::HeaderValue,
    client: reqwest::Client,
    /// route → not before (from `X-RateLimit-Remaining: 0` and `Reset-After`).
    routes: Arc<Mutex<HashMap<String, Instant>>>,
}

/// `GET /gateway/bot`: where to connect and how many new sessions Discord still allows.
pub(crate) struct GatewayBot {
    pub url: String,
    pub remaining: Option<u64>,
    pub reset_after: Option<Duration>,
}

/// A duration from a platform's seconds, if it is one (not negative, NaN or huge).
pub(crate) fn seconds(v: f64) -> Option<Duration> {
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(3600.0)))
}

/// Why asking for the gateway failed.
pub(crate) enum GatewayLookup {
    BadToken,
    Failed(String),
}

impl Rest {
    /// The HTTP client (for attachments on Discord's CDN, fetched without the token).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn new(api_url: &str, token: &str) -> Result<Rest, String> {
        let client = nanoclaw_channel::http::client()
            .user_agent(concat!(
                "DiscordBot (https://github.com/nanoclaw-rs/nanoclaw, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot create the Discord HTTP client: {e}"))?;
        let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bot {token}"))
            .map_err(|_| "DISCORD_BOT_TOKEN has characters no token has".to_string())?;
        // Never shown by reqwest's Debug output.
        authorization.set_sensitive(true);
        Ok(Rest {
            base: format!("{api_url}/api/v10"),
            token: token.to_string(),
            authorization,
            client,
            routes: Arc::default(),
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
    }

    /// Who the token signs in as (`GET /users/@me`), for `setup` and `doctor`.
    pub async fn current_user(&self) -> Result<String, nanoclaw_channel::VerifyError> {
        use nanoclaw_channel::VerifyError;
        let response = self
            .request(reqwest::Method::GET, "/users/@me")
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|e| {
                VerifyError::Unreachable(format!("cannot reach Discord: {}", e.without_url()))
            })?;
        match response.status().as_u16() {
            401 => Err(VerifyError::Refused(
                "Discord refused DISCORD_BOT_TOKEN (401): Developer Portal → your application → Bot → Reset Token, and use the new token"
                    .into(),
            )),
            s if !(200..300).contains(&s) => Err(VerifyError::Unreachable(format!(
                "Discord answered {s} to GET /users/@me"
            ))),
            _ => {
                let me: Value = response.json().await.map_err(|e| {
                    VerifyError::Unreachable(format!(
                        "unreadable answer to GET /users/@me: {}",
                        e.without_url()
                    ))
                })?;
                if me["bot"].as_bool() != Some(true) {
                    return Err(VerifyError::Refused(
                        "DISCORD_BOT_TOKEN is not a bot's token: use the token of your application's Bot page"
                            .into(),
                    ));
                }
                Ok(format!(
                    "the bot {} (GET /users/@me)",
                    me["username"].as_str().unwrap_or("?")
                ))
            }
        }
    }

    /// The gateway URL for this bot and its session budget (`GET /gateway/bot`).
    pub async fn gateway_bot(&self) -> Result<GatewayBot, GatewayLookup> {
        let response = self
            .request(reqwest::Method::GET, "/gateway/bot")
            .send()
            .await
            .map_err(|e| {
                GatewayLookup::Failed(format!("cannot reach Discord: {}", e.without_url()))
            })?;
        match response.status().as_u16() {
            401 => return Err(GatewayLookup::BadToken),
            s if !(200..300).contains(&s) => {
                return Err(GatewayLookup::Failed(format!(
                    "Discord answered {s} to GET /gateway/bot"
                )));
            }
            _ => {}
        }
        let body: Value = response.json().await.map_err(|e| {
            GatewayLookup::Failed(format!("unreadable gateway answer: {}", e.without_url()))
        })?;
        let limit = &body["session_start_limit"];
        Ok(GatewayBot {
            url: body["url"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| GatewayLookup::Failed("the gateway answer has no url".into()))?,
            remaining: limit["remaining"].as_u64(),
            reset_after: limit["reset_after"]
                .as_f64()
                .and_then(|ms| seconds(ms / 1000.0)),
        })
    }

    /// How long `route` is held by its rate limit, if it is.
    fn route_hold(&self, route: &str) -> Option<Duration> {
        let not_before = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .copied()?;
        let now = Instant::now();
        (not_before > now).then(|| not_before - now)
    }

    /// Remembers the route's bucket state from a response's headers.
    fn note_limits(&self, route: &str, headers: &reqwest::header::HeaderMap) {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        match (
            get("x-ratelimit-remaining"),
            get("x-ratelimit-reset-after").and_then(seconds),
        ) {
            (Some(remaining), Some(after)) if remaining <= 0.0 && !after.is_zero() => {
                routes.insert(route.to_string(), Instant::now() + after);
            }
            _ => {
                routes.remove(route);
            }
        }
    }

    /// Posts one message; `nonce` with `enforce_nonce` makes a repeat of the same
    /// piece (after a crash) return the first one instead of posting it again.
    /// With a file (`name`, its media type, its bytes): `multipart/form-data` with the
    /// message as `payload_json` and the file as `files[0]`, as Discord takes uploads.
    pub async fn send_message(
        &self,
        channel: &str,
        content: &str,
        nonce: &str,
        file: Option<(&str, &str, &[u8])>,
    ) -> Result<(), ChannelError> {
        let route = format!("POST /channels/{channel}/messages");
        // A short hold is waited out; a long one goes back to delivery, which meanwhile
        // sends other chats' replies.
        match self.route_hold(&route) {
            Some(hold) if hold > Duration::from_secs(1) => {
                return Err(ChannelError::new(
                    "discord",
                    format!("rate limited by Discord for {:.1} s", hold.as_secs_f64()),
                )
                .with_retry(SendRetry::After(hold)));
            }
            Some(hold) => tokio::time::sleep(hold).await,
            None => {}
        }
        // Replies mention nobody: an agent quoting "@everyone" must not ping a server.
        let mut payload = json!({
            "content": content,
            "allowed_mentions": {"parse": []},
            "nonce": nonce,
            "enforce_nonce": true,
            // SUPPRESS_EMBEDS: Discord's servers would fetch every link in a reply
            // to preview it, a way out for an agent whose network is limited.
            "flags": 4,
        });
        let request = self.request(
            reqwest::Method::POST,
            &format!("/channels/{channel}/messages"),
        );
        let request = match file {
            None => request.json(&payload),
            Some((name, media_type, bytes)) => {
                payload["attachments"] = json!([{"id": 0, "filename": name}]);
                let (content_type, body) = nanoclaw_channel::multipart::Form::new()
                    .text("payload_json", &payload.to_string())
                    .file("files[0]", name, media_type, bytes)
                    .finish();
                request
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body)
            }
        };
        let sent = request.send().await.map_err(|e| {
            ChannelError::new(
                "discord",
                format!("cannot reach Discord: {}", e.without_url()),
            )
        })?;
        self.note_limits(&route, sent.headers());
        let status = sent.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_header = sent
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok())
            .and_then(seconds);
        let body: Value = sent.json().await.unwrap_or(Value::Null);
        let described = format!(
            "Discord refused the message ({status}{}{})",
            body["code"]
                .as_i64()
                .map(|c| format!(", code {c}"))
                .unwrap_or_default(),
            body["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        Err(match status {
            429 => {
                let after = body["retry_after"]
                    .as_f64()
                    .and_then(seconds)
                    .or(retry_header)
                    .unwrap_or(Duration::from_secs(1));
                ChannelError::new(
                    "discord",
                    format!("rate limited by Discord for {:.1} s", after.as_secs_f64()),
                )
                .with_retry(SendRetry::After(after))
            }
            401 => ChannelError::new(
                "discord",
                "Discord refused DISCORD_BOT_TOKEN; copy it again from the Developer Portal (Bot → Reset Token)",
            ),
            403 | 404
                if body["code"]
                    .as_i64()
                    .is_some_and(|c| NEVER_CODES.contains(&c)) =>
            {
                ChannelError::new("discord", described).with_retry(SendRetry::Never)
            }
            400..=499 => ChannelError::new("discord", described).with_retry(SendRetry::Never),
            _ => ChannelError::new("discord", described),
        })
    }

    /// Up to [`PAGE`] messages of `channel` after the message `after`, oldest first.
    pub async fn messages_after(
        &self,
        channel: &str,
        after: &str,
    ) -> Result<Vec<Value>, nanoclaw_channel::catch_up::HistoryError> {
        use nanoclaw_channel::catch_up::HistoryError;
        let route = format!("GET /channels/{channel}/messages");
        if let Some(hold) = self.route_hold(&route) {
            tokio::time::sleep(hold).await;
        }
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/channels/{channel}/messages?after={after}&limit={PAGE}"),
            )
            .send()
            .await
            .map_err(|e| {
                HistoryError::Failed(format!("cannot reach Discord: {}", e.without_url()))
            })?;
        self.note_limits(&route, response.headers());
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            403 | 404 => {
                return Err(HistoryError::Gone(format!(
                    "Discord answered {status} (the bot needs View Channel and Read Message History there)"
                )));
            }
            _ => return Err(HistoryError::Failed(format!("Discord answered {status}"))),
        }
        let mut page: Vec<Value> = response.json().await.map_err(|e| {
            HistoryError::Failed(format!("unreadable message list: {}", e.without_url()))
        })?;
        page.sort_by(|a, b| {
            nanoclaw_channel::catch_up::id_order(
                a["id"].as_str().unwrap_or(""),
                b["id"].as_str().unwrap_or(""),
            )
        });
        Ok(page)
    }

    /// A guild's name (`GET /guilds/{id}`).
    pub async fn guild_name(&self, guild: &str) -> Option<String> {
        let r = self
            .request(reqwest::Method::GET, &format!("/guilds/{guild}"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        v["name"].as_str().map(str::to_string)
    }

    /// Shows the typing indicator once; `false` when Discord refuses it (stop asking).
    pub async fn typing(&self, channel: &str) -> bool {
        match self
            .request(
                reqwest::Method::POST,
                &format!("/channels/{channel}/typing"),
            )
            .send()
            .await
        {
            Ok(r) => !r.status().is_client_error(),
            Err(e) => {
                tracing::debug!("discord: typing indicator failed: {}", e.without_url());
                true
            }
        }
    }

    /// `GET /channels/{id}` (for a chat name not seen in a guild).
    pub async fn channel(&self, channel: &str) -> Option<Value> {
        let r = self
            .request(reqwest::Method::GET, &format!("/channels/{channel}"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }
}
