//! A scripted fake of the Anthropic Messages API (`POST /v1/messages`).
//!
//! It speaks the real wire format, so the production client runs unchanged against it:
//! streaming responses are Server-Sent Events in the documented order (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta` with `text_delta` or
//! `input_json_delta` split into several chunks, `content_block_stop`, `message_delta`,
//! `message_stop`); non-streaming responses are the JSON message. Tests script turns
//! (text, tool uses, HTTP errors, stream `error` events) and read back every request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One content block of a scripted assistant turn.
#[derive(Debug, Clone)]
pub enum Block {
    Text(String),
    ToolUse { name: String, input: Value },
}

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An assistant message; `stop_reason` follows from the blocks (`tool_use` or `end_turn`).
    Message(Vec<Block>),
    /// An HTTP error with the API's error body, e.g. 529 `overloaded_error`.
    HttpError {
        status: u16,
        kind: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// A stream that starts, then sends an `error` event.
    StreamError { kind: String, message: String },
    /// A streamed message that stops after its first `events` events: the connection
    /// closes (`stall` is `None`) or stays open and silent for `stall`, then closes.
    Broken {
        blocks: Vec<Block>,
        events: usize,
        stall: Option<std::time::Duration>,
    },
}

impl Reply {
    pub fn text(text: &str) -> Reply {
        Reply::Message(vec![Block::Text(text.into())])
    }

    pub fn tool(name: &str, input: Value) -> Reply {
        Reply::Message(vec![Block::ToolUse {
            name: name.into(),
            input,
        }])
    }

    /// A tool call whose stream is cut inside its input: `message_start`,
    /// `content_block_start` and two pieces of the input JSON, then the connection closes.
    pub fn cut_mid_tool(name: &str, input: Value) -> Reply {
        Reply::Broken {
            blocks: vec![Block::ToolUse {
                name: name.into(),
                input,
            }],
            events: 4,
            stall: None,
        }
    }

    /// A text answer that begins (`message_start`, `content_block_start`, `ping`, one
    /// delta), then goes silent for `stall` with the connection open.
    pub fn stalled(text: &str, stall: std::time::Duration) -> Reply {
        Reply::Broken {
            blocks: vec![Block::Text(text.into())],
            events: 4,
            stall: Some(stall),
        }
    }

    pub fn overloaded(retry_after: Option<u64>) -> Reply {
        Reply::HttpError {
            status: 529,
            kind: "overloaded_error".into(),
            message: "Overloaded".into(),
            retry_after,
        }
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Value,
    /// When the request arrived (for latency benchmarks).
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All text in the request's messages, for "did the model see X" checks.
    pub fn all_text(&self) -> String {
        self.body.to_string()
    }

    /// The names of the tools the request offers, in order.
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    ids: u64,
    /// When set, only this key (`x-api-key` or bearer) is accepted, as the real API does.
    key: Option<String>,
    /// `GET /v1/models` requests seen.
    model_lists: usize,
    /// Answers requests once the script is used up (else "ok").
    responder: Option<Responder>,
}

/// Makes the answer to a request from its body.
pub type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// The key or token a request presents.
fn presented(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-api-key")
        .or_else(|| headers.get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("Bearer ").to_string())
}

pub struct FakeAnthropic {
    pub url: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAnthropic {
    /// Starts on `127.0.0.1` at an ephemeral port.
    pub async fn start(script: Vec<Reply>) -> FakeAnthropic {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..Default::default()
        }));
        let changed = Arc::new(Notify::new());
        let app = Router::new()
            .route(
                "/v1/messages",
                post({
                    let (state, changed) = (Arc::clone(&state), Arc::clone(&changed));
                    move |headers: HeaderMap, body: Bytes| {
                        handle(Arc::clone(&state), Arc::clone(&changed), headers, body)
                    }
                }),
            )
            .route(
                "/v1/models",
                get({
                    let state = Arc::clone(&state);
                    move |headers: HeaderMap| {
                        let state = Arc::clone(&state);
                        async move { list_models(&state, &headers) }
                    }
                }),
            );
        let (url, server) = crate::serve_on_loopback(app, "fake Anthropic API").await;
        FakeAnthropic {
            url,
            state,
            changed,
            server,
        }
    }

    /// Once the script is used up, answers each request with `responder(body)`.
    pub fn respond_with(&self, responder: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.lock().responder = Some(Arc::new(responder));
    }

    /// Accepts only `key` from now on; others get the API's 401.
    pub fn require_key(&self, key: &str) {
        self.lock().key = Some(key.to_string());
    }

    /// How many `GET /v1/models` requests arrived.
    pub fn model_lists(&self) -> usize {
        self.lock().model_lists
    }

    pub fn push(&self, reply: Reply) {
        self.lock().script.push_back(reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        tokio::time::timeout(crate::DEADLINE, async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let requests = self.requests();
                if requests.len() >= n {
                    return requests;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the fake Anthropic API did not get {n} requests in time"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `GET /v1/models`: the API's list shape, one model.
fn list_models(state: &Mutex<State>, headers: &HeaderMap) -> Response {
    let key = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.model_lists += 1;
        st.key.clone()
    };
    if headers.get("anthropic-version").is_none() {
        return api_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
            None,
        );
    }
    if key.is_some() && presented(headers) != key {
        return api_error(401, "authentication_error", "invalid x-api-key", None);
    }
    let body = json!({"data": [{"type": "model", "id": "claude-test", "display_name": "Claude Test",
        "created_at": "2026-01-01T00:00:00Z"}], "has_more": false, "first_id": "claude-test",
        "last_id": "claude-test"});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return api_error(400, "invalid_request_error", "the body is not JSON", None);
    };
    let required = state.lock().unwrap_or_else(|p| p.into_inner()).key.clone();
    if required.is_some() && presented(&headers) != required {
        return api_error(401, "authentication_error", "invalid x-api-key", None);
    }
    let (reply, id) = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.push(Recorded {
            headers: headers.clone(),
            body: request.clone(),
            at: std::time::Instant::now(),
        });
        st.ids += 1;
        (
            st.script
                .pop_front()
                .or_else(|| st.responder.as_ref().map(|r| r(&request)))
                .unwrap_or_else(|| Reply::text("ok")),
            st.ids,
        )
    };
    changed.notify_waiters();
    if headers.get("anthropic-version").is_none() {
        return api_error(
            400,
            "invalid_request_error",
            "anthropic-version header is required",
            None,
        );
    }
    let model = request["model"].as_str().unwrap_or("claude").to_string();
    let input_tokens = (body.len() / 4) as u64;
    match reply {
        Reply::HttpError {
            status,
            kind,
            message,
            retry_after,
        } => api_error(status, &kind, &message, retry_after),
        Reply::StreamError { kind, message } => {
            let mut events = vec![sse(
                "message_start",
                message_start(id, &model, input_tokens),
            )];
            events.push(sse(
                "error",
                json!({"type": "error", "error": {"type": kind, "message": message}}),
            ));
            stream_response(events)
        }
        Reply::Broken {
            blocks,
            events,
            stall,
        } => {
            let (content, stop_reason) = content_of(&blocks, id);
            let output_tokens = output_tokens_of(&content);
            let mut all = message_events(
                id,
                &model,
                input_tokens,
                output_tokens,
                &content,
                stop_reason,
            );
            all.truncate(events);
            let first = futures_util::stream::iter(
                all.into_iter().map(|e| Ok::<_, Infallible>(Bytes::from(e))),
            );
            let silence = futures_util::stream::once(async move {
                if let Some(stall) = stall {
                    tokio::time::sleep(stall).await;
                }
                Ok::<_, Infallible>(Bytes::new())
            });
            sse_response(Body::from_stream(futures_util::StreamExt::chain(
                first, silence,
            )))
        }
        Reply::Message(blocks) => {
            let (content, stop_reason) = content_of(&blocks, id);
            let output_tokens = output_tokens_of(&content);
            if request["stream"].as_bool() == Some(true) {
                stream_response(message_events(
                    id,
                    &model,
                    input_tokens,
                    output_tokens,
                    &content,
                    stop_reason,
                ))
            } else {
                let message = json!({
                    "id": format!("msg_{id:04}"), "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop_reason, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
                });
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    message.to_string(),
                )
                    .into_response()
            }
        }
    }
}

/// The API's content blocks for a scripted turn, and its stop reason.
fn content_of(blocks: &[Block], id: u64) -> (Vec<Value>, &'static str) {
    let stop_reason = if blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })) {
        "tool_use"
    } else {
        "end_turn"
    };
    let content = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { name, input } => json!({
                "type": "tool_use", "id": format!("toolu_{id:04}_{i}"), "name": name, "input": input
            }),
        })
        .collect();
    (content, stop_reason)
}

fn output_tokens_of(content: &[Value]) -> u64 {
    content
        .iter()
        .map(|c| c.to_string().len() as u64 / 4)
        .sum::<u64>()
        + 1
}

fn api_error(status: u16, kind: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(seconds) = retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

fn sse(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn message_start(id: u64, model: &str, input_tokens: u64) -> Value {
    json!({"type": "message_start", "message": {
        "id": format!("msg_{id:04}"), "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})
}

fn message_events(
    id: u64,
    model: &str,
    input_tokens: u64,
    output_tokens: u64,
    content: &[Value],
    stop_reason: &str,
) -> Vec<String> {
    let mut events = vec![sse("message_start", message_start(id, model, input_tokens))];
    for (index, block) in content.iter().enumerate() {
        match block["type"].as_str() {
            Some("text") => {
                events.push(sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                ));
                events.push(sse("ping", json!({"type": "ping"})));
                let text = block["text"].as_str().unwrap_or("");
                for chunk in split_chars(text, 7) {
                    events.push(sse(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": chunk}}),
                    ));
                }
            }
            _ => {
                events.push(sse(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
                ));
                let json_text = block["input"].to_string();
                for chunk in split_chars(&json_text, 5) {
                    events.push(sse(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": chunk}}),
                    ));
                }
            }
        }
        events.push(sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push(sse(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(sse("message_stop", json!({"type": "message_stop"})));
    events
}

/// Splits into pieces of at most `n` characters (never inside a UTF-8 sequence).
fn split_chars(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

fn stream_response(events: Vec<String>) -> Response {
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
    );
    sse_response(Body::from_stream(stream))
}

/// A 200 event stream with `body`.
fn sse_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
