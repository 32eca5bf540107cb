//! `POST /nanoclaw/embeddings` on a run's socket: text to vectors for `memory_search`'s
//! hybrid ranking, from an OpenAI-compatible `/v1/embeddings` endpoint
//! (`EMBEDDINGS_URL`) with its key (`EMBEDDINGS_API_KEY`) added here, as the model key
//! is. The sandbox sends `{"input": [text, …]}` and gets `{"embeddings": [[f32, …], …]}`
//! back: the proxy builds both bodies itself, so nothing else in either direction passes
//! (an error body that quotes the key never reaches the sandbox).

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{InFlight, RunIdentity, error};
use crate::config::Secret;

/// Texts one request may carry.
pub const MAX_INPUTS: usize = 128;
/// Characters one text may have.
pub const MAX_INPUT_CHARS: usize = 8_000;
/// The request body a sandbox may send.
const MAX_BODY: usize = 2 << 20;
/// The answer read from the service.
const MAX_ANSWER: usize = 32 << 20;
/// Dimensions a vector may have.
const MAX_DIMENSIONS: usize = 4096;

/// The configured service.
pub struct Upstream {
    pub url: String,
    pub model: String,
    pub key: Option<Secret>,
}

pub(super) async fn forward(
    upstream: Option<&Upstream>,
    client: &reqwest::Client,
    identity: &RunIdentity,
    method: &axum::http::Method,
    body: Body,
    _in_flight: InFlight,
) -> Response {
    let refuse = |status, message: &str| error(status, "invalid_request_error", message);
    let Some(upstream) = upstream else {
        return refuse(
            StatusCode::NOT_FOUND,
            "embeddings are not configured on this host (EMBEDDINGS_URL)",
        );
    };
    // A budget cannot bound what embeddings cost: budgeted groups search by words only.
    if identity.budget.is_limited() {
        return refuse(
            StatusCode::FORBIDDEN,
            "this group has a token budget, which embeddings are not counted against; it searches by words only",
        );
    }
    if method != axum::http::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST {\"input\": [...]}");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request is larger than {} MiB", MAX_BODY >> 20),
        );
    };
    let input: Vec<String> = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => match v["input"].as_array() {
            Some(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            None => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    if input.is_empty() || input.len() > MAX_INPUTS {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("send {{\"input\": [text, …]}} with 1 to {MAX_INPUTS} texts"),
        );
    }
    if input
        .iter()
        .any(|t| t.chars().count() > MAX_INPUT_CHARS || t.is_empty())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("each text must have 1 to {MAX_INPUT_CHARS} characters"),
        );
    }
    let mut request = client
        .post(&upstream.url)
        .timeout(std::time::Duration::from_secs(60))
        .json(&json!({"model": upstream.model, "input": input}));
    if let Some(key) = &upstream.key {
        request = request.bearer_auth(key.expose());
    }
    let unavailable = |why: String| {
        tracing::warn!(group = ?identity.group_folder, "embeddings: {why}");
        error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            &format!("the embeddings service {why}"),
        )
    };
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return unavailable(format!("cannot be reached ({})", e.without_url())),
    };
    let status = response.status();
    if !status.is_success() {
        return unavailable(format!("answered HTTP {}", status.as_u16()));
    }
    let mut answer = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if answer.len() + chunk.len() > MAX_ANSWER {
                    return unavailable("gave an answer too large".into());
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return unavailable(format!("broke off its answer ({})", e.without_url())),
        }
    }
    match vectors(&answer, input.len()) {
        Ok(embeddings) => (
            StatusCode::OK,
            axum::Json(json!({"embeddings": embeddings})),
        )
            .into_response(),
        Err(why) => unavailable(why),
    }
}

/// The `n` vectors of an OpenAI embeddings answer, in input order, as plain numbers.
fn vectors(answer: &[u8], n: usize) -> Result<Vec<Vec<f32>>, String> {
    let value: Value =
        serde_json::from_slice(answer).map_err(|_| "gave an unreadable answer".to_string())?;
    let data = value["data"]
        .as_array()
        .ok_or("gave an answer without data")?;
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let vector: Vec<f32> = item["embedding"]
            .as_array()
            .ok_or("gave an item without an embedding")?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
            .collect::<Option<_>>()
            .ok_or("gave a vector that is not all numbers")?;
        if vector.is_empty() || vector.len() > MAX_DIMENSIONS {
            return Err(format!("gave a vector of {} dimensions", vector.len()));
        }
        match out.get_mut(index) {
            Some(slot @ None) => *slot = Some(vector),
            _ => return Err("gave vectors that do not match the texts".into()),
        }
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "gave fewer vectors than texts".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vector_per_text_passes() {
        let ok = br#"{"object":"list","data":[{"index":1,"embedding":[0.5,1]},{"index":0,"embedding":[1,0]}],"usage":{"total_tokens":3}}"#;
        assert_eq!(vectors(ok, 2), Ok(vec![vec![1.0, 0.0], vec![0.5, 1.0]]));
        for bad in [
            &br#"{"data":[{"index":0,"embedding":[1,0]}]}"#[..],
            br#"{"data":[{"index":0,"embedding":[1,0]},{"index":0,"embedding":[1,0]}]}"#,
            br#"{"data":[{"index":0,"embedding":["sk-secret"]},{"index":1,"embedding":[1]}]}"#,
            br#"{"error":{"message":"bad key sk-secret"}}"#,
            br#"{"data":[{"index":5,"embedding":[1]},{"index":1,"embedding":[1]}]}"#,
            b"not json",
        ] {
            assert!(vectors(bad, 2).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
