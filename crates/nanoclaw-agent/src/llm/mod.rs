//! Language model providers. The conversation is kept in the Anthropic Messages format
//! (JSON content blocks, passed through untouched, so server-side tool blocks like web
//! search results survive); other providers translate to and from it.

pub mod anthropic;
pub mod openai;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// An HTTP client builder with TLS ready (rustls with the ring provider, installed once).
pub fn http_client() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// One model call.
pub struct ChatRequest<'a> {
    pub system: &'a str,
    /// `{"role": "user"|"assistant", "content": [blocks]}`.
    pub messages: &'a [Value],
    /// Tool definitions (`{"name", "description", "input_schema"}` or server tools).
    pub tools: &'a [Value],
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// The assistant's content blocks.
    pub content: Vec<Value>,
    pub stop_reason: String,
    pub usage: Usage,
}

impl ChatResponse {
    /// The text blocks, joined.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("")
    }

    /// `(id, name, input)` of each tool the model wants run here.
    pub fn tool_uses(&self) -> Vec<(String, String, Value)> {
        self.content
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| {
                (
                    b["id"].as_str().unwrap_or_default().to_string(),
                    b["name"].as_str().unwrap_or_default().to_string(),
                    b["input"].clone(),
                )
            })
            .collect()
    }
}

/// Why a model call failed. Messages are meant for the user: no secrets in them.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(
        "the model API rejected the credentials ({0}); check the API key or token configured for nanoclaw"
    )]
    Auth(String),
    #[error("the model API refused the request: {0}")]
    BadRequest(String),
    #[error("the model API is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Llm: Send + Sync {
    async fn complete(&self, request: &ChatRequest<'_>) -> Result<ChatResponse, LlmError>;
}

/// Retry policy for overload and server errors.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    /// Longest wait honoured from a `retry-after` header.
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// The delay before attempt `n` (1-based, after a failure): `retry-after` if the
    /// server gave one (capped), else doubling from `first_delay`.
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or_else(|| {
                self.first_delay
                    .saturating_mul(1 << n.saturating_sub(1).min(10))
            })
            .min(self.max_delay)
    }
}

/// Whether an HTTP status is worth retrying.
pub fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Parses `retry-after` (seconds; HTTP dates are not used by these APIs).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The error message inside an API error body, if any (never echoes request data).
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays() {
        let r = Retry {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(r.delay(1, None), Duration::from_millis(100));
        assert_eq!(r.delay(3, None), Duration::from_millis(400));
        assert_eq!(r.delay(9, None), Duration::from_secs(1), "capped");
        assert_eq!(
            r.delay(1, Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
        assert_eq!(
            r.delay(1, Some(Duration::from_secs(600))),
            Duration::from_secs(1)
        );
        assert!(
            retryable(529)
                && retryable(429)
                && retryable(503)
                && !retryable(400)
                && !retryable(401)
        );
    }
}
