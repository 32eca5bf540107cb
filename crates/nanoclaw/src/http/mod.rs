//! The local HTTP server (SPEC §14) on `127.0.0.1:$NANOCLAW_HTTP_PORT`: the web channel,
//! JSON views, metrics. Every route but `/healthz` needs `Authorization: Bearer {token}`
//! with the token from `data/http-token`.

mod api;
mod events;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use axum::Router as HttpRouter;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::channels::ChannelSet;
use crate::config::Config;
use crate::delivery::OutboundEvent;
use crate::metrics::Metrics;
use crate::queue::GroupQueue;
use crate::router::Router;
use crate::router::sender_allowlist::SenderPolicy;
use crate::runner::AgentRunner;
use crate::store::Store;

/// Largest request body accepted (a chat message is far smaller).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What the handlers need.
pub struct HttpState {
    pub token: String,
    /// Where the server listens (its port is part of every allowed `Host`/`Origin`).
    pub addr: std::net::SocketAddr,
    /// Web sign-in codes and sessions.
    pub sessions: Arc<web::Sessions>,
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub router: Arc<Router>,
    pub queue: Arc<GroupQueue>,
    pub senders: Arc<SenderPolicy>,
    pub runner: Arc<dyn AgentRunner>,
    pub channels: ChannelSet,
    pub events: broadcast::Sender<OutboundEvent>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Turns true when the daemon stops; open event streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// Wakes the scheduler after a task change.
    pub tasks_changed: Arc<tokio::sync::Notify>,
}

/// A JSON error: `{"error": "what went wrong and what to do"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!("HTTP request failed: {message}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the nanoclaw log for details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

pub fn app(state: Arc<HttpState>) -> HttpRouter {
    let protected = HttpRouter::new()
        .route("/api/chats", get(api::chats))
        .route("/api/logout", post(web::sign_out))
        .route("/api/messages", post(api::post_message))
        .route("/api/chats/{jid}/messages", get(api::chat_messages))
        .route("/api/events", get(events::stream))
        .route("/api/groups", get(api::groups).post(api::add_group))
        .route(
            "/api/groups/{jid}",
            axum::routing::delete(api::remove_group),
        )
        .route("/api/usage", get(api::usage))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{group}/{file}", get(api::run_log))
        .route("/api/files/{id}", get(api::reply_file))
        .route(
            "/api/chats/{jid}/files",
            post(api::post_file).layer(DefaultBodyLimit::max(api::MAX_UPLOAD_BYTES)),
        )
        .route("/api/tasks", get(api::tasks))
        .route("/api/tasks/{id}/{action}", post(api::task_action))
        .route("/api/status", get(api::status))
        .route("/metrics", get(api::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    // Minting sign-in codes takes the bearer token itself, never a session.
    let bearer_only = HttpRouter::new()
        .route("/api/login-codes", post(web::new_code))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_bearer,
        ));
    HttpRouter::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/", get(web::index))
        .route("/login", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/api/session", post(web::sign_in))
        .merge(protected)
        .merge(bearer_only)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            web::require_own_host,
        ))
        .layer(middleware::from_fn(web::security_headers))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// The bearer token or (for the web app) a session cookie; a state-changing request on
/// the cookie must come from this daemon's own origin (CSRF).
async fn require_token(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let cookies = web::session_cookies(&headers);
    if !headers.contains_key(header::AUTHORIZATION) && !cookies.is_empty() {
        let secret = headers
            .get(web::SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        let Some(id) = state.sessions.check(&cookies, secret) else {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this browser is not signed in (or its session has ended): run `nanoclaw ui` for a new sign-in link",
            )
            .into_response();
        };
        if web::changes_state(request.method()) && !web::own_origin(&headers, state.addr) {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "a cross-site request with the session cookie was refused");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross-site request refused: changes must come from the nanoclaw page itself",
            )
            .into_response();
        }
        let mut request = request;
        request.extensions_mut().insert(web::SessionId(id));
        return next.run(request).await;
    }
    require_bearer(State(state), headers, request, next).await
}

async fn require_bearer(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        other => {
            let message = if other.is_some() {
                "wrong bearer token; use the token in data/http-token"
            } else {
                "missing `Authorization: Bearer <token>` header; the token is in data/http-token"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares without an early exit, so response time does not leak how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
