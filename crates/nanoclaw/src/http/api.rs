//! JSON routes: the web channel's inbound side and read-only views.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, HttpState};
use crate::channels::web;
use crate::router::Accepted;
use crate::store::{ChatMeta, Message, RegisteredGroup};

/// `POST /api/messages` body.
#[derive(Debug, Deserialize)]
pub struct PostMessage {
    chat_jid: String,
    sender: String,
    sender_name: String,
    text: String,
}

const MAX_NAME_CHARS: usize = 256;

fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "`{field}` is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must not contain control characters"
        )));
    }
    Ok(())
}

pub async fn post_message(
    State(state): State<Arc<HttpState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "the request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::new(status, rejection.body_text())
        }
    })?;
    let post: PostMessage = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object {{\"chat_jid\", \"sender\", \"sender_name\", \"text\"}} (all strings): {e}"
        ))
    })?;
    web::check_jid(&post.chat_jid).map_err(ApiError::bad_request)?;
    check_name("sender", &post.sender)?;
    check_name("sender_name", &post.sender_name)?;
    if post.text.trim().is_empty() {
        return Err(ApiError::bad_request("`text` must not be empty"));
    }
    let timestamp = crate::clock::now();
    let id = crate::ids::message_id();
    let chat = ChatMeta {
        jid: post.chat_jid.clone(),
        name: None,
        timestamp: timestamp.clone(),
        channel: Some("web".into()),
        is_group: Some(false),
    };
    let message = Message {
        id: id.clone(),
        chat_jid: post.chat_jid,
        sender: post.sender,
        sender_name: post.sender_name,
        content: post.text,
        timestamp,
        is_from_me: false,
        is_bot_message: false,
        flagged: None,
    };
    match state.router.accept(chat, message).await {
        Ok(Accepted::Stored { .. }) | Ok(Accepted::Duplicate) => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
        }
        Ok(Accepted::Dropped) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the sender allowlist drops messages from this sender in this chat",
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    limit: Option<usize>,
}

pub async fn chat_messages(
    State(state): State<Arc<HttpState>>,
    Path(jid): Path<String>,
    Query(query): Query<MessagesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let messages = state
        .store
        .call(move |s| s.chat_messages(&jid, query.limit))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(messages))
}

/// `GET /api/chats`: every chat of every channel, most recently active first.
pub async fn chats(State(state): State<Arc<HttpState>>) -> Result<impl IntoResponse, ApiError> {
    let chats = state
        .store
        .call(|s| s.chats())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(chats))
}

pub async fn groups(State(state): State<Arc<HttpState>>) -> Result<impl IntoResponse, ApiError> {
    let groups = state
        .store
        .call(|s| s.registered_groups())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        groups.iter().map(RegisteredGroup::view).collect::<Vec<_>>(),
    ))
}

pub async fn tasks(State(state): State<Arc<HttpState>>) -> Result<impl IntoResponse, ApiError> {
    let tasks = state
        .store
        .call(|s| s.tasks())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(tasks))
}

/// `POST /api/tasks/{id}/pause|resume|cancel` (what `nanoclaw tasks` uses while the
/// daemon runs, so the scheduler hears of it at once).
pub async fn task_action(
    State(state): State<Arc<HttpState>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    use crate::store::{StoreError, TaskStatus};
    let to = match action.as_str() {
        "pause" => TaskStatus::Paused,
        "resume" => TaskStatus::Active,
        "cancel" => TaskStatus::Cancelled,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown task action `{other}`; use pause, resume or cancel"),
            ));
        }
    };
    let task = state
        .store
        .call(move |s| s.set_task_status(&id, to))
        .await
        .map_err(|e| match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            other => ApiError::internal(other),
        })?;
    state.tasks_changed.notify_one();
    Ok(Json(task))
}

pub async fn status(State(state): State<Arc<HttpState>>) -> Result<impl IntoResponse, ApiError> {
    let (groups, undelivered, messages) = state
        .store
        .call(|s| {
            Ok::<_, crate::store::StoreError>((
                s.registered_groups()?.len(),
                s.count_pending_outbox()?,
                s.count_messages()?,
            ))
        })
        .await
        .map_err(ApiError::internal)?;
    let senders = {
        let policy = Arc::clone(&state.senders);
        tokio::task::spawn_blocking(move || policy.current())
            .await
            .map_err(ApiError::internal)?
    };
    let channels: Vec<Value> = state
        .channels
        .iter()
        .map(|c| json!({ "name": c.name(), "connected": c.is_connected(), "condition": c.condition() }))
        .collect();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "assistant_name": state.config.assistant_name,
        "timezone": state.config.zone.name,
        "runner": {
            "available": state.runner.is_available(),
            "description": state.runner.describe(),
        },
        "queue": state.queue.snapshot(),
        "registered_groups": groups,
        "stored_messages": messages,
        "undelivered_replies": undelivered,
        "sender_allowlist": {
            "valid": !senders.is_invalid(),
            "description": senders.describe(),
        },
        "channels": channels,
    })))
}

pub async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let snapshot = state.queue.snapshot();
    let idle = snapshot.active.iter().filter(|r| r.idle).count() as u64;
    let body = state.metrics.render(&[
        (
            "nanoclaw_runs_active",
            "Agent runs alive now (working or idle).",
            snapshot.active.len() as u64,
        ),
        (
            "nanoclaw_runs_idle",
            "Agent runs waiting idle for follow-ups.",
            idle,
        ),
        (
            "nanoclaw_groups_waiting",
            "Groups waiting for a run slot.",
            snapshot.waiting.len() as u64,
        ),
        (
            "nanoclaw_uptime_seconds",
            "Seconds since the daemon started.",
            state.started.elapsed().as_secs(),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
