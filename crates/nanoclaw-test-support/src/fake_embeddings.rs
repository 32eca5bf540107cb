//! A fake OpenAI-compatible embeddings endpoint (`POST /v1/embeddings`, JSON
//! `{"model", "input": string | [string]}`, answering `{"object": "list", "data":
//! [{"object": "embedding", "index", "embedding"}], "model", "usage"}`), with a tiny model
//! of meaning: one dimension per concept, so "car" and "automobile" are near. Proven by
//! driving it with the official `openai` Python client (`tests/transcription.rs`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Words that mean one thing, a dimension each.
const CONCEPTS: &[&[&str]] = &[
    &["car", "automobile", "vehicle", "sedan"],
    &["dog", "puppy", "hound"],
    &["password", "passcode", "wifi"],
    &["doctor", "dentist", "appointment"],
];

/// What the fake model makes of `text`.
pub fn meaning(text: &str) -> Vec<f32> {
    let t = text.to_lowercase();
    let mut v: Vec<f32> = CONCEPTS
        .iter()
        .map(|words| words.iter().filter(|w| t.contains(*w)).count() as f32)
        .collect();
    v.push(0.05);
    v
}

struct Inner {
    key: Option<String>,
    /// `(model, inputs, authorization)` of each request.
    requests: Vec<(String, Vec<String>, Option<String>)>,
}

#[derive(Clone)]
pub struct FakeEmbeddings {
    /// The endpoint to configure (`EMBEDDINGS_URL`).
    pub url: String,
    /// The API root, for clients that take a base URL.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeEmbeddings {
    pub async fn start(key: Option<&str>) -> FakeEmbeddings {
        let inner = Arc::new(Mutex::new(Inner {
            key: key.map(str::to_string),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/embeddings", post(embed))
            .with_state(Arc::clone(&inner));
        let (root, _task) = crate::serve_on_loopback(app, "the fake embeddings API").await;
        FakeEmbeddings {
            url: format!("{root}/v1/embeddings"),
            base_url: format!("{root}/v1"),
            inner,
        }
    }

    /// `(model, inputs, authorization)` of each request so far.
    pub fn requests(&self) -> Vec<(String, Vec<String>, Option<String>)> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .clone()
    }
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn embed(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = inner.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(key) = &st.key
        && authorization.as_deref() != Some(&format!("Bearer {key}"))
    {
        return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let Some(model) = request["model"].as_str() else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if inputs.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "'input' must be a string or strings",
        );
    }
    // The official client asks for base64 floats unless told otherwise.
    let base64 = request["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = meaning(text);
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    st.requests
        .push((model.to_string(), inputs.clone(), authorization));
    axum::Json(json!({"object": "list", "data": data, "model": model,
                      "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}))
    .into_response()
}
