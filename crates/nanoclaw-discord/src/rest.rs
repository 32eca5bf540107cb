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
    authorization: String,
    client: reqwest::Client,
    /// route → not before (from `X-RateLimit-Remaining: 0` and `Reset-After`).
    routes: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Why asking for the gateway failed.
pub(crate) enum GatewayLookup {
    BadToken,
    Failed(String),
}

impl Rest {
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
        Ok(Rest {
            base: format!("{api_url}/api/v10"),
            authorization: format!("Bot {token}"),
            client,
            routes: Arc::default(),
        })
    }

    pub fn token(&self) -> &str {
        self.authorization.strip_prefix("Bot ").unwrap_or("")
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("authorization", &self.authorization)
    }

    /// The gateway URL for this bot (`GET /gateway/bot`).
    pub async fn gateway_url(&self) -> Result<String, GatewayLookup> {
        let response = self
            .request(reqwest::Method::GET, "/gateway/bot")
            .send()
            .await
            .map_err(|e| {
                GatewayLookup::Failed(format!("cannot reach Discord: {}", e.without_url()))
            })?;
        match response.status().as_u16() {
            401 | 403 => return Err(GatewayLookup::BadToken),
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
        body["url"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| GatewayLookup::Failed("the gateway answer has no url".into()))
    }

    /// Waits until `route` may be called again.
    async fn wait_for_route(&self, route: &str) {
        let not_before = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .copied();
        if let Some(at) = not_before {
            tokio::time::sleep_until(at).await;
        }
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
        match (get("x-ratelimit-remaining"), get("x-ratelimit-reset-after")) {
            (Some(remaining), Some(after)) if remaining <= 0.0 && after > 0.0 => {
                routes.insert(
                    route.to_string(),
                    Instant::now() + Duration::from_secs_f64(after.min(3600.0)),
                );
            }
            _ => {
                routes.remove(route);
            }
        }
    }

    /// Posts one message; `nonce` with `enforce_nonce` makes a repeat of the same
    /// piece (after a crash) return the first one instead of posting it again.
    pub async fn send_message(
        &self,
        channel: &str,
        content: &str,
        nonce: &str,
    ) -> Result<(), ChannelError> {
        let route = format!("POST /channels/{channel}/messages");
        self.wait_for_route(&route).await;
        let sent = self
            .request(
                reqwest::Method::POST,
                &format!("/channels/{channel}/messages"),
            )
            // Replies mention nobody: an agent quoting "@everyone" must not ping a server.
            .json(&json!({
                "content": content,
                "allowed_mentions": {"parse": []},
                "nonce": nonce,
                "enforce_nonce": true,
            }))
            .send()
            .await
            .map_err(|e| {
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
            .and_then(|v| v.parse::<f64>().ok());
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
                let after = body["retry_after"].as_f64().or(retry_header).unwrap_or(1.0);
                ChannelError::new(
                    "discord",
                    format!("rate limited by Discord for {after:.1} s"),
                )
                .with_retry(SendRetry::After(Duration::from_secs_f64(
                    after.clamp(0.0, 3600.0),
                )))
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
    pub async fn messages_after(&self, channel: &str, after: &str) -> Result<Vec<Value>, String> {
        let route = format!("GET /channels/{channel}/messages");
        self.wait_for_route(&route).await;
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/channels/{channel}/messages?after={after}&limit={PAGE}"),
            )
            .send()
            .await
            .map_err(|e| format!("cannot reach Discord: {}", e.without_url()))?;
        self.note_limits(&route, response.headers());
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "Discord answered {status} (the bot needs Read Message History there)"
            ));
        }
        let mut page: Vec<Value> = response
            .json()
            .await
            .map_err(|e| format!("unreadable message list: {}", e.without_url()))?;
        page.sort_by(|a, b| {
            crate::gateway::snowflake_order(
                a["id"].as_str().unwrap_or(""),
                b["id"].as_str().unwrap_or(""),
            )
        });
        Ok(page)
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
