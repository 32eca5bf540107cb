//! A scripted fake of an OpenAI-compatible chat-completions API
//! (`POST /v1/chat/completions`, non-streaming, with tool calls), as Ollama and others
//! serve it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum OpenAiReply {
    Text(String),
    /// `(function name, arguments object)`.
    ToolCall(String, Value),
}

#[derive(Default)]
struct State {
    script: VecDeque<OpenAiReply>,
    requests: Vec<(HeaderMap, Value)>,
}

pub struct FakeOpenAi {
    pub url: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOpenAi {
    pub async fn start(script: Vec<OpenAiReply>) -> FakeOpenAi {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..Default::default()
        }));
        let handler_state = Arc::clone(&state);
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&handler_state);
                async move {
                    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
                    };
                    let reply = {
                        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                        st.requests.push((headers, request));
                        st.script.pop_front().unwrap_or(OpenAiReply::Text("ok".into()))
                    };
                    let (message, finish) = match reply {
                        OpenAiReply::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
                        OpenAiReply::ToolCall(name, args) => (
                            json!({"role": "assistant", "content": null, "tool_calls": [
                                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}),
                            "tool_calls",
                        ),
                    };
                    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
                        {"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
                    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
                }
            }),
        );
        let (url, server) = crate::serve_on_loopback(app, "fake OpenAI API").await;
        FakeOpenAi { url, state, server }
    }

    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .clone()
    }
}
