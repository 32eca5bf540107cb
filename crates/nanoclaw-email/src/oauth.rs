//! OAuth2 access tokens for XOAUTH2 (RFC 6749 refresh-token grant), refreshed before
//! they expire. A refused refresh token (`invalid_grant`) is final until the user gets
//! a new one: the channel reports it and waits instead of asking again and again.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Refresh when less than this is left.
const MARGIN: Duration = Duration::from_secs(300);

pub struct Tokens {
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_token: Mutex<String>,
    cached: Mutex<Option<(String, Instant)>>,
    http: reqwest::Client,
}

/// Why no token could be had.
#[derive(Debug)]
pub enum TokenError {
    /// The refresh token (or client) was refused: the user must act.
    Refused(String),
    /// The endpoint could not be reached or answered oddly: try later.
    Failed(String),
}

impl Tokens {
    pub fn new(
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<Tokens, String> {
        let http = nanoclaw_channel::http::client()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Tokens {
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            refresh_token: Mutex::new(refresh_token.to_string()),
            cached: Mutex::new(None),
            http,
        })
    }

    /// A token valid for a few minutes at least; `fresh` forces a new one (the server
    /// refused the cached one).
    pub async fn access_token(&self, fresh: bool) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if !fresh
            && let Some((token, until)) = cached.as_ref()
            && until.saturating_duration_since(Instant::now()) > MARGIN
        {
            return Ok(token.clone());
        }
        let refresh = self.refresh_token.lock().await.clone();
        let response = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                TokenError::Failed(format!("cannot reach the OAuth2 token endpoint: {e}"))
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("");
            let described = body["error_description"].as_str().unwrap_or("");
            return Err(match error {
                "invalid_grant" => TokenError::Refused(format!(
                    "the OAuth2 refresh token was refused ({described}): it was revoked or has expired; get a new one (README: Email) and set EMAIL_OAUTH2_REFRESH_TOKEN"
                )),
                "invalid_client" | "unauthorized_client" => TokenError::Refused(format!(
                    "the OAuth2 client was refused ({error}: {described}): check EMAIL_OAUTH2_CLIENT_ID and EMAIL_OAUTH2_CLIENT_SECRET"
                )),
                _ => TokenError::Failed(format!(
                    "the OAuth2 token endpoint answered {status} {error} {described}"
                )),
            });
        }
        let Some(token) = body["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(TokenError::Failed(
                "the OAuth2 token endpoint's answer has no access_token".into(),
            ));
        };
        let lifetime = body["expires_in"].as_u64().unwrap_or(3600).min(86_400);
        if let Some(rotated) = body["refresh_token"].as_str().filter(|t| !t.is_empty()) {
            // Some providers rotate refresh tokens; the old one may stop working.
            *self.refresh_token.lock().await = rotated.to_string();
        }
        *cached = Some((
            token.to_string(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token.to_string())
    }

    /// Forgets the cached token (the server refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// The SASL XOAUTH2 initial response (before base64).
pub fn xoauth2(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}
