//! A fake OpenAI-compatible transcription endpoint (`POST /v1/audio/transcriptions`,
//! `multipart/form-data` with `file` and `model`, answering `{"text": …}`), as OpenAI
//! and local whisper servers serve it. Proven by driving it with the official `openai`
//! Python client (`tests/transcription.rs`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub model: String,
    pub file_name: String,
    pub bytes: Vec<u8>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct Inner {
    /// When set, only `Bearer {key}` is accepted.
    key: Option<String>,
    text: String,
    /// The next requests answer this status.
    fail_with: Option<u16>,
    heard: Vec<Heard>,
}

#[derive(Clone)]
pub struct FakeTranscribe {
    /// The endpoint to configure (`TRANSCRIBE_URL`).
    pub url: String,
    /// The API root (`…/v1`), for clients that take a base URL.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeTranscribe {
    /// Answers every request with `text`; requires `key` when given.
    pub async fn start(text: &str, key: Option<&str>) -> FakeTranscribe {
        let inner = Arc::new(Mutex::new(Inner {
            key: key.map(str::to_string),
            text: text.to_string(),
            fail_with: None,
            heard: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/audio/transcriptions", post(transcribe))
            .with_state(Arc::clone(&inner));
        let (root, _task) = crate::serve_on_loopback(app, "the fake transcription API").await;
        FakeTranscribe {
            url: format!("{root}/v1/audio/transcriptions"),
            base_url: format!("{root}/v1"),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn heard(&self) -> Vec<Heard> {
        self.lock().heard.clone()
    }

    /// Every later request answers `status` (a body that quotes the key, as some
    /// servers' errors do).
    pub fn fail_with(&self, status: u16) {
        self.lock().fail_with = Some(status);
    }
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn transcribe(State(inner): State<Arc<Mutex<Inner>>>, request: Request) -> Response {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    {
        let st = inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = st.fail_with {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return openai_error(code, &format!("failed; your key was {authorization:?}"));
        }
        if let Some(key) = &st.key
            && authorization.as_deref() != Some(&format!("Bearer {key}"))
        {
            return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided");
        }
    }
    let Ok(mut form) = Multipart::from_request(request, &()).await else {
        return openai_error(StatusCode::BAD_REQUEST, "expected multipart/form-data");
    };
    let (mut model, mut file) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return openai_error(StatusCode::BAD_REQUEST, "malformed form"),
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let Ok(bytes) = field.bytes().await else {
            return openai_error(StatusCode::BAD_REQUEST, "malformed form");
        };
        match name.as_str() {
            "model" => model = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some((file_name.unwrap_or_default(), bytes.to_vec())),
            _ => {}
        }
    }
    let Some(model) = model else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let Some((file_name, bytes)) = file.filter(|(n, b)| !n.is_empty() && !b.is_empty()) else {
        return openai_error(StatusCode::BAD_REQUEST, "you must provide a file");
    };
    let mut st = inner.lock().unwrap_or_else(|p| p.into_inner());
    st.heard.push(Heard {
        model,
        file_name,
        bytes,
        authorization,
    });
    axum::Json(json!({"text": st.text})).into_response()
}
