//! `POST /nanoclaw/embeddings` on a run's socket: text to vectors for `memory_search`'s
//! hybrid ranking, from an OpenAI-compatible `/v1/embeddings` endpoint
//! (`EMBEDDINGS_URL`) with its key (`EMBEDDINGS_API_KEY`) added here, as the model key
//! is. The sandbox sends `{"input": [text, …]}` and gets `{"embeddings": [[f32, …], …]}`
//! back: the proxy builds both bodies itself, so nothing else in either direction passes
//! (an error body that quotes the key never reaches the sandbox).

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{InFlight, RunIdentity, error};
use crate::config::Secret;
use crate::store::Store;

/// Texts one request may carry.
pub const MAX_INPUTS: usize = 128;
/// Characters one text may have.
pub const MAX_INPUT_CHARS: usize = 8_000;
/// The request body a sandbox may send.
const MAX_BODY: usize = 2 << 20;
/// Dimensions a vector may have.
const MAX_DIMENSIONS: usize = 4096;
/// The most bytes one number of an answer may take ("-0.0123456789012345," and some).
const BYTES_PER_NUMBER: usize = 32;
/// Calls to the service at once, across all runs (each holds an answer in memory).
pub const MAX_CALLS: usize = 4;
/// Texts one run may have embedded: a search embeds at most 513 (new chunks and the
/// query), so this is dozens of searches, and it bounds what a runaway run costs.
pub const MAX_TEXTS_PER_RUN: usize = 20_000;

/// The configured service.
pub struct Upstream {
    pub url: String,
    pub model: String,
    pub key: Option<Secret>,
    pub calls: Arc<tokio::sync::Semaphore>,
    /// Texts embedded per run token so far.
    pub per_run: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Upstream {
    pub fn new(url: String, model: String, key: Option<Secret>) -> Upstream {
        Upstream {
            url,
            model,
            key,
            calls: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS)),
            per_run: Default::default(),
        }
    }

    /// Counts `n` more texts for `run`; false past [`MAX_TEXTS_PER_RUN`].
    fn charge(&self, run: &str, n: usize) -> bool {
        let mut per_run = self.per_run.lock().unwrap_or_else(|p| p.into_inner());
        // Runs end; their counts need not stay (a few thousand live runs at most).
        if per_run.len() > 4096 {
            per_run.clear();
        }
        let used = per_run.entry(run.to_string()).or_default();
        if *used + n > MAX_TEXTS_PER_RUN {
            return false;
        }
        *used += n;
        true
    }
}

#[derive(Deserialize)]
struct Request {
    input: Vec<String>,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<AnswerUsage>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct AnswerUsage {
    #[serde(default)]
    total_tokens: i64,
}

pub(super) async fn forward(
    upstream: Option<&Upstream>,
    client: &reqwest::Client,
    usage: Option<&Arc<Store>>,
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
    let input = serde_json::from_slice::<Request>(&bytes)
        .map(|r| r.input)
        .unwrap_or_default();
    drop(bytes);
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
    if !upstream.charge(&identity.run_id, input.len()) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("this run has had {MAX_TEXTS_PER_RUN} texts embedded, the most one run may"),
        );
    }
    let Ok(_call) = upstream.calls.acquire().await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the proxy is stopping");
    };
    let count = input.len();
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
    // As large as `count` vectors of the most dimensions can be, and no larger.
    let max_answer = count * MAX_DIMENSIONS * BYTES_PER_NUMBER + (64 << 10);
    let mut answer = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if answer.len() + chunk.len() > max_answer {
                    return unavailable("gave an answer too large".into());
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return unavailable(format!("broke off its answer ({})", e.without_url())),
        }
    }
    match vectors(&answer, count) {
        Ok((embeddings, tokens)) => {
            drop(answer);
            tracing::info!(group = ?identity.group_folder, texts = count, tokens, "embeddings answered");
            if let Some(store) = usage {
                let (store, group, run) = (
                    Arc::clone(store),
                    identity.group_folder.clone(),
                    identity.run_id.clone(),
                );
                let model = format!("embeddings:{}", upstream.model);
                tokio::task::spawn_blocking(move || {
                    let used = crate::store::Usage {
                        input_tokens: tokens,
                        ..Default::default()
                    };
                    if let Err(e) = store.record_usage(&group, &run, Some(&model), &used) {
                        tracing::warn!("cannot record embeddings usage: {e}");
                    }
                });
            }
            (
                StatusCode::OK,
                axum::Json(json!({"embeddings": embeddings})),
            )
                .into_response()
        }
        Err(why) => unavailable(why),
    }
}

/// The `n` vectors of an OpenAI embeddings answer, in input order, as plain numbers,
/// and the tokens it says it counted (its count of texts when it says none).
fn vectors(answer: &[u8], n: usize) -> Result<(Vec<Vec<f32>>, i64), String> {
    let parsed: Answer =
        serde_json::from_slice(answer).map_err(|_| "gave an unreadable answer".to_string())?;
    let tokens = parsed
        .usage
        .map(|u| u.total_tokens)
        .filter(|t| *t > 0)
        .unwrap_or(n as i64);
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (position, item) in parsed.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        let vector = item.embedding;
        if vector.iter().any(|f| !f.is_finite()) {
            return Err("gave a vector that is not all numbers".into());
        }
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
        .map(|v| (v, tokens))
        .ok_or_else(|| "gave fewer vectors than texts".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vector_per_text_passes() {
        let ok = br#"{"object":"list","data":[{"index":1,"embedding":[0.5,1]},{"index":0,"embedding":[1,0]}],"usage":{"total_tokens":3}}"#;
        assert_eq!(
            vectors(ok, 2),
            Ok((vec![vec![1.0, 0.0], vec![0.5, 1.0]], 3))
        );
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
