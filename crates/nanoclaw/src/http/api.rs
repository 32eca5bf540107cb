//! JSON routes: the web channel's inbound side and read-only views.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
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
    let body = body.map_err(|r| body_refused(r, &format!("{} bytes", super::MAX_BODY_BYTES)))?;
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
    accept(&state, chat, message).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id }))))
}

/// A body that could not be read: too large (`max` says how large it may be), or cut.
fn body_refused(rejection: BytesRejection, max: &str) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, format!("the body is larger than {max}"))
    } else {
        ApiError::new(status, rejection.body_text())
    }
}

/// Stores a message a web chat's user sent and lets the router act on it.
async fn accept(state: &HttpState, chat: ChatMeta, message: Message) -> Result<(), ApiError> {
    match state.router.accept(chat, message).await {
        Ok(Accepted::Stored { .. }) | Ok(Accepted::Duplicate) => Ok(()),
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
    let web = jid.starts_with(web::PREFIX);
    let (messages, files) = state
        .store
        .call(move |s| {
            let messages = s.chat_messages(&jid, query.limit)?;
            // A web chat's replies with files get their download link (`file`), as
            // their events did.
            let files = if web {
                s.reply_files(&jid)?
            } else {
                Default::default()
            };
            Ok::<_, crate::store::StoreError>((messages, files))
        })
        .await
        .map_err(ApiError::internal)?;
    let out: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Some((id, file)) = files.get(&m.message.id) {
                v["file"] = json!({"name": file.name, "size": file.size,
                                   "url": format!("/api/files/{id}")});
            }
            v
        })
        .collect();
    Ok(Json(out))
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
            "nanoclaw_tasks_alive",
            "Asynchronous tasks alive in the daemon (flat when nothing leaks).",
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as u64,
        ),
        (
            "nanoclaw_uptime_seconds",
            "Seconds since the daemon started.",
            state.started.elapsed().as_secs(),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// `POST /api/groups`: register a group, with the CLI's and IPC's validation
/// (`GroupRequest::check`). `"replace": true` changes a registered one (its folder,
/// trigger, container_config…), keeping the old registration if the new one is refused.
#[derive(Debug, Deserialize)]
pub struct NewGroup {
    jid: String,
    name: String,
    folder: String,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default = "yes")]
    requires_trigger: bool,
    #[serde(default)]
    is_main: bool,
    /// JSON: an object, or its text.
    #[serde(default)]
    container_config: Option<Value>,
    #[serde(default)]
    replace: bool,
}

fn yes() -> bool {
    true
}

pub async fn add_group(
    State(state): State<Arc<HttpState>>,
    body: Result<Json<NewGroup>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    use crate::store::{GroupRequest, StoreError};
    let Json(g) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let container_config = match g.container_config {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let group = GroupRequest {
        jid: &g.jid,
        name: &g.name,
        folder: &g.folder,
        trigger: g.trigger.as_deref(),
        requires_trigger: g.requires_trigger,
        container_config,
        is_main: g.is_main,
    }
    .check(&state.config.default_trigger())
    .map_err(ApiError::bad_request)?;
    let folder = group
        .folder()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let replace = g.replace;
    let stored = group.clone();
    let result = state
        .store
        .call(move |s| {
            let old = if replace {
                s.remove_group(&stored.jid)?
            } else {
                None
            };
            match s.register_group(&stored) {
                Ok(()) => Ok(()),
                Err(e) => {
                    if let Some(old) = old {
                        s.register_group(&old)?;
                    }
                    Err(e)
                }
            }
        })
        .await;
    match result {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) => return Err(ApiError::new(StatusCode::CONFLICT, m)),
        Err(e) => return Err(ApiError::internal(e)),
    }
    crate::layout::Layout::new(&state.config.root)
        .create_group_dirs(&folder)
        .map_err(|e| {
            ApiError::internal(format!("registered, but cannot create its folders: {e}"))
        })?;
    tracing::info!(jid = %group.jid, folder = %folder, "group registered from the web app");
    Ok((StatusCode::CREATED, Json(group.view())))
}

/// `DELETE /api/groups/{jid}`: unregister (messages and folder are kept).
pub async fn remove_group(
    State(state): State<Arc<HttpState>>,
    Path(jid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let key = jid.clone();
    let removed = state
        .store
        .call(move |s| s.remove_group(&key))
        .await
        .map_err(ApiError::internal)?;
    match removed {
        Some(g) => Ok(Json(g.view())),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{jid} is not registered"),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    days: Option<u32>,
}

/// `GET /api/usage[?days=N]`: tokens per local day and group, and each group's daily
/// budget (what `nanoclaw usage` shows).
pub async fn usage(
    State(state): State<Arc<HttpState>>,
    Query(q): Query<UsageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let days = q.days.unwrap_or(14).clamp(1, 366);
    let config = Arc::clone(&state.config);
    let view = state
        .store
        .call(move |s| {
            let tz = config.zone.tz.clone();
            let (today, _, since) = crate::cli::usage_window(&tz, days)
                .map_err(|e| crate::store::StoreError::Conflict(format!("{e:#}")))?;
            let rows = s.usage_since(&since)?;
            let totals = crate::cli::usage_totals(&rows, &tz);
            let budgets = crate::cli::daily_budgets(&config, s).unwrap_or_default();
            let rows: Vec<Value> = totals
                .iter()
                .map(|((day, group), (u, responses))| {
                    crate::cli::usage_row_json(day, group, u, *responses)
                })
                .collect();
            Ok::<_, crate::store::StoreError>(json!({
                "days": days, "today": today.to_string(), "rows": rows, "daily_budgets": budgets,
            }))
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(view))
}

/// `GET /api/runs`: the 50 most recent run logs of every registered group.
pub async fn runs(State(state): State<Arc<HttpState>>) -> Result<impl IntoResponse, ApiError> {
    let groups = state
        .store
        .call(|s| s.registered_groups())
        .await
        .map_err(ApiError::internal)?;
    let dir = crate::layout::Layout::new(&state.config.root).groups_dir();
    let runs = tokio::task::spawn_blocking(move || {
        let mut all: Vec<(String, String)> = Vec::new();
        for g in &groups {
            let Ok(folder) = g.folder() else { continue };
            for name in run_log_names(&dir, folder.as_str()) {
                all.push((folder.as_str().to_string(), name));
            }
        }
        // Names start with the time (run-YYYYmmdd-HHMMSS-…): newest first.
        all.sort_by(|a, b| b.1.cmp(&a.1));
        all.truncate(50);
        all.into_iter()
            .map(|(folder, name)| {
                let text = read_run_log(&dir, &folder, &name).unwrap_or_default();
                let field = |key: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
                        .unwrap_or("")
                        .to_string()
                };
                json!({"group": folder, "file": name, "started": field("started"),
                    "duration_ms": field("duration_ms").parse::<u64>().ok(),
                    "outcome": field("outcome"), "scheduled_task": field("scheduled_task") == "true"})
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(runs))
}

/// `GET /api/runs/{group}/{file}`: one run log, as text.
pub async fn run_log(
    State(state): State<Arc<HttpState>>,
    Path((group, file)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let folder = crate::layout::GroupFolder::parse(&group)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !is_run_log_name(&file) {
        return Err(ApiError::bad_request(format!(
            "{file:?} is not a run log's name"
        )));
    }
    let dir = crate::layout::Layout::new(&state.config.root).groups_dir();
    let text = tokio::task::spawn_blocking(move || read_run_log(&dir, folder.as_str(), &file))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such run log"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// The largest file the web app uploads.
pub const MAX_UPLOAD_BYTES: usize = 25 << 20;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    name: String,
    sender: String,
    sender_name: String,
    #[serde(default)]
    text: String,
}

/// A file a user sends from the web app (`POST /api/chats/{jid}/files?name=&sender=&sender_name=&text=`,
/// the file as the body): saved into the inbox of the group registered for the chat,
/// as files from every other channel are, and stored as a message naming it.
pub async fn post_file(
    State(state): State<Arc<HttpState>>,
    Path(jid): Path<String>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    use nanoclaw_channel::ChannelHost;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "give the file's name, sender and sender_name in the query (?name=notes.txt&sender=…&sender_name=…): {}",
            e.body_text()
        ))
    })?;
    let body = body.map_err(|r| body_refused(r, &format!("{} MB", MAX_UPLOAD_BYTES >> 20)))?;
    web::check_jid(&jid).map_err(ApiError::bad_request)?;
    check_name("name", &query.name)?;
    check_name("sender", &query.sender)?;
    check_name("sender_name", &query.sender_name)?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the file is empty (send its bytes as the body)",
        ));
    }
    if let Some(why) = state.router.refuse_file(&jid, body.len() as u64).await {
        return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, why));
    }
    let path = match state.router.save_file(&jid, &query.name, &body).await {
        Ok(Some(path)) => path,
        Ok(None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no group is registered for {jid}; files are kept only for registered chats"
                ),
            ));
        }
        Err(e) => return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e)),
    };
    let note =
        nanoclaw_channel::files::saved(state.router.as_ref(), "web", &query.name, &body, &path)
            .await;
    let text = query.text.trim();
    let content = if text.is_empty() {
        note
    } else {
        format!("{text}\n{note}")
    };
    let timestamp = crate::clock::now();
    let id = crate::ids::message_id();
    let chat = ChatMeta {
        jid: jid.clone(),
        name: None,
        timestamp: timestamp.clone(),
        channel: Some("web".into()),
        is_group: Some(false),
    };
    let message = Message {
        id: id.clone(),
        chat_jid: jid,
        sender: query.sender,
        sender_name: query.sender_name,
        content,
        timestamp,
        is_from_me: false,
        is_bot_message: false,
        flagged: None,
    };
    accept(&state, chat, message).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "path": path })),
    ))
}

/// A file an agent sent to a web chat (`send_file`), by its reply's outbox id: always
/// as a download, never rendered in this origin (an agent chose its bytes and name).
pub async fn reply_file(
    State(state): State<Arc<HttpState>>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a file id (a number)")))?;
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such file (files are kept 7 days)",
        )
    };
    let item = state
        .store
        .call(move |s| s.outbox_item(id))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(gone)?;
    let layout = crate::layout::Layout::new(&state.config.root);
    // Only the web app downloads files; other chats' copies are gone once sent.
    let web = item.chat_jid.starts_with(crate::channels::web::PREFIX);
    let Some(file) = item
        .file
        .filter(|f| web && crate::ipc::files::is_copy(&layout, &f.path))
    else {
        return Err(gone());
    };
    let bytes = tokio::fs::read(&file.path).await.map_err(|_| gone())?;
    let ascii: String = file
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = file
        .name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".into(),
            ),
            (header::CACHE_CONTROL, "private, no-store".into()),
        ],
        bytes,
    )
        .into_response())
}

/// `run-20260131-143200-<run id>.log`.
fn is_run_log_name(name: &str) -> bool {
    name.starts_with("run-")
        && name.ends_with(".log")
        && name.len() < 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Run log names in a group's `logs/` (opened without following symlinks: agents can
/// write their group folder).
fn run_log_names(groups: &std::path::Path, folder: &str) -> Vec<String> {
    let Ok(dir) = crate::layout::open_dir_beneath(groups, &[folder, "logs"]) else {
        return Vec::new();
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_run_log_name(n))
        .collect()
}

/// A run log's text (at most 256 KiB), never through a symlink.
fn read_run_log(groups: &std::path::Path, folder: &str, name: &str) -> Option<String> {
    use rustix::fs::{Mode, OFlags, openat};
    use std::io::Read;
    let dir = crate::layout::open_dir_beneath(groups, &[folder, "logs"]).ok()?;
    let fd = openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(256 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}
