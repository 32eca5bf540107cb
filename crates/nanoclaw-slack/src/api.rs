//! Slack's Web API: `POST {SLACK_API_URL}/{method}`, form-encoded (every method takes
//! that, read methods take nothing else), the token in the `Authorization` header only.
//! Slack answers HTTP 200 with `{"ok": false, "error": "…"}` for most refusals and 429
//! with `Retry-After` when rate limited.

use std::time::Duration;

use serde_json::Value;

/// One call may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// One file upload may take this long (below delivery's limit on a send with a file).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// HTTP 429: wait this long.
    RateLimited(Duration),
    /// `ok: false` with Slack's error code (`not_in_channel`, `invalid_auth`, …).
    Slack(String),
    /// Any other HTTP failure, or no answer.
    Transport(String),
}

impl ApiError {
    /// Slack answered, and did not do what was asked (a refusal or a rate limit), as
    /// opposed to no answer, where it may have.
    pub fn answered(&self) -> bool {
        matches!(self, ApiError::RateLimited(_) | ApiError::Slack(_))
    }

    /// Worth asking again later: no answer, a rate limit, Slack's own trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::RateLimited(_) | ApiError::Transport(_) => true,
            ApiError::Slack(code) => matches!(
                code.as_str(),
                "ratelimited"
                    | "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout"
                    | "team_added_to_org"
            ),
        }
    }

    /// Codes that mean the token itself is wrong, revoked or of the wrong kind.
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Slack(code) if matches!(code.as_str(),
            "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked"
            | "token_expired" | "not_allowed_token_type" | "no_permission"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::RateLimited(d) => write!(f, "rate limited for {:.1} s", d.as_secs_f64()),
            ApiError::Slack(code) => write!(f, "Slack answered {code}"),
            ApiError::Transport(e) => f.write_str(e),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Api {
    /// `SLACK_API_URL`, without a trailing slash.
    base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Result<Api, String> {
        let client = nanoclaw_channel::http::client()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot create the Slack HTTP client: {e}"))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    /// Sends a file's bytes to the `upload_url` that `files.getUploadURLExternal` gave:
    /// raw, without the token (the URL itself is the permission), and only over https
    /// (or to this machine).
    pub async fn upload(&self, url: &str, bytes: Vec<u8>) -> Result<(), ApiError> {
        nanoclaw_channel::http::check_endpoint("Slack's upload_url", url)
            .map_err(ApiError::Transport)?;
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .timeout(UPLOAD_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                ApiError::Transport(format!("cannot upload to Slack: {}", e.without_url()))
            })?;
        match response.status().as_u16() {
            200 => Ok(()),
            status => Err(ApiError::Transport(format!(
                "Slack answered HTTP {status} to the file upload"
            ))),
        }
    }

    /// Calls `method` with `token` and form `params`; the answer when `ok` is true.
    pub async fn call(
        &self,
        method: &str,
        token: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let response = self
            .client
            .post(format!("{}/{method}", self.base))
            .bearer_auth(token)
            .form(params)
            .send()
            .await
            .map_err(|e| ApiError::Transport(format!("cannot reach Slack: {}", e.without_url())))?;
        let status = response.status().as_u16();
        if status == 429 {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(1.0);
            return Err(ApiError::RateLimited(Duration::from_secs_f64(
                after.min(3600.0),
            )));
        }
        if !(200..300).contains(&status) {
            return Err(ApiError::Transport(format!(
                "Slack answered HTTP {status} to {method}"
            )));
        }
        let body: Value = response.json().await.map_err(|e| {
            ApiError::Transport(format!(
                "unreadable answer to {method}: {}",
                e.without_url()
            ))
        })?;
        if body["ok"].as_bool() == Some(true) {
            Ok(body)
        } else {
            Err(ApiError::Slack(
                body["error"]
                    .as_str()
                    .unwrap_or("unknown_error")
                    .to_string(),
            ))
        }
    }
}
