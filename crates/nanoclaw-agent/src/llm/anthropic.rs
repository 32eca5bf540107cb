//! The Anthropic Messages API (`POST {base}/v1/messages`), streamed over SSE.
//!
//! Prompt caching: the system prompt, the tool list and the last block of the
//! conversation carry `cache_control: ephemeral`, so each turn reuses the cached prefix.

use async_trait::async_trait;
use nanoclaw_protocol::sse::SseParser;
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Llm, LlmError, Retry, Usage, error_message, retry_after, retryable,
};

pub const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    client: reqwest::Client,
    base_url: String,
    api_key: String,
    model: String,
    retry: Retry,
    /// The longest the response may stay silent: until its headers, and between two
    /// pieces of its stream. The API sends `ping` events while it works, so silence
    /// this long means the stream is stuck.
    idle: std::time::Duration,
}

impl Anthropic {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: &str,
        model: &str,
        retry: Retry,
        idle: std::time::Duration,
    ) -> Anthropic {
        Anthropic {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            model: model.to_string(),
            retry,
            idle,
        }
    }

    fn body(&self, request: &ChatRequest<'_>) -> Value {
        let ephemeral = json!({"type": "ephemeral"});
        let mut tools: Vec<Value> = request.tools.to_vec();
        if let Some(last) = tools.last_mut() {
            last["cache_control"] = ephemeral.clone();
        }
        let mut messages: Vec<Value> = request.messages.to_vec();
        if let Some(last) = messages.last_mut()
            && let Some(blocks) = last["content"].as_array_mut()
            && let Some(block) = blocks.last_mut()
        {
            block["cache_control"] = ephemeral.clone();
        }
        let mut body = json!({
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": [{"type": "text", "text": request.system, "cache_control": ephemeral}],
            "messages": messages,
            "stream": true,
        });
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        body
    }
}

/// Outcome of one HTTP attempt.
enum Attempt {
    Done(ChatResponse),
    Retry(String, Option<std::time::Duration>),
    Fail(LlmError),
}

#[async_trait]
impl Llm for Anthropic {
    async fn complete(&self, request: &ChatRequest<'_>) -> Result<ChatResponse, LlmError> {
        let body = self.body(request);
        let mut last_problem = String::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            match self.attempt(&body).await {
                Attempt::Done(response) => return Ok(response),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(problem, after) => {
                    last_problem = problem;
                    if attempt < self.retry.attempts {
                        let delay = self.retry.delay(attempt, after);
                        eprintln!("model API: {last_problem}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        Err(LlmError::Unavailable(format!(
            "{last_problem} (after {} attempts)",
            self.retry.attempts
        )))
    }
}

impl Anthropic {
    async fn attempt(&self, body: &Value) -> Attempt {
        let silent = || {
            Attempt::Retry(
                format!(
                    "the model API sent nothing for {} s",
                    self.idle.as_secs_f64()
                ),
                None,
            )
        };
        let sent = self
            .client
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
            .header("content-type", "application/json")
            .json(body)
            .send();
        let mut response = match tokio::time::timeout(self.idle, sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Attempt::Retry(format!("cannot reach the API ({e})"), None),
            Err(_) => return silent(),
        };
        let status = response.status().as_u16();
        if status != 200 {
            let after = retry_after(response.headers());
            let text = tokio::time::timeout(self.idle, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = error_message(&text);
            return match status {
                401 | 403 => Attempt::Fail(LlmError::Auth(format!("HTTP {status}: {message}"))),
                s if retryable(s) => Attempt::Retry(format!("HTTP {status}: {message}"), after),
                400 | 402 | 404 | 413 | 422 => {
                    Attempt::Fail(LlmError::BadRequest(format!("HTTP {status}: {message}")))
                }
                _ => Attempt::Fail(LlmError::Unavailable(format!("HTTP {status}: {message}"))),
            };
        }
        let mut stream = StreamState::default();
        let mut parser = SseParser::new();
        loop {
            let chunk = match tokio::time::timeout(self.idle, response.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Attempt::Retry(format!("the response stream broke ({e})"), None);
                }
                Err(_) => return silent(),
            };
            for event in parser.push(&chunk) {
                match stream.apply(&event.data) {
                    Ok(()) => {}
                    Err(StreamFailure::Retry(problem)) => return Attempt::Retry(problem, None),
                    Err(StreamFailure::Fail(e)) => return Attempt::Fail(e),
                }
            }
            if stream.finished {
                break;
            }
        }
        match stream.into_response() {
            Some(r) => Attempt::Done(r),
            None => Attempt::Retry("the response stream ended early".into(), None),
        }
    }
}

enum StreamFailure {
    Retry(String),
    Fail(LlmError),
}

/// Assembles a message from its stream events.
#[derive(Default)]
struct StreamState {
    blocks: Vec<Value>,
    /// Accumulated `input_json_delta` text per block.
    partial_json: Vec<String>,
    stop_reason: Option<String>,
    usage: Usage,
    started: bool,
    finished: bool,
}

impl StreamState {
    fn apply(&mut self, data: &str) -> Result<(), StreamFailure> {
        let event: Value = serde_json::from_str(data)
            .map_err(|e| StreamFailure::Retry(format!("unreadable stream event ({e})")))?;
        let index = event["index"].as_u64().unwrap_or(0) as usize;
        match event["type"].as_str().unwrap_or_default() {
            "message_start" => {
                self.started = true;
                self.add_usage(&event["message"]["usage"]);
            }
            "content_block_start" => {
                while self.blocks.len() <= index {
                    self.blocks.push(Value::Null);
                    self.partial_json.push(String::new());
                }
                self.blocks[index] = event["content_block"].clone();
            }
            "content_block_delta" => {
                let Some(block) = self.blocks.get_mut(index) else {
                    return Err(StreamFailure::Retry("a delta for an unknown block".into()));
                };
                let delta = &event["delta"];
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let text = format!(
                            "{}{}",
                            block["text"].as_str().unwrap_or_default(),
                            delta["text"].as_str().unwrap_or_default()
                        );
                        block["text"] = Value::String(text);
                    }
                    "input_json_delta" => {
                        self.partial_json[index]
                            .push_str(delta["partial_json"].as_str().unwrap_or_default());
                    }
                    "thinking_delta" => {
                        let text = format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap_or_default(),
                            delta["thinking"].as_str().unwrap_or_default()
                        );
                        block["thinking"] = Value::String(text);
                    }
                    "signature_delta" => {
                        block["signature"] = delta["signature"].clone();
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let (Some(block), Some(json)) =
                    (self.blocks.get_mut(index), self.partial_json.get(index))
                    && !json.is_empty()
                {
                    block["input"] = serde_json::from_str(json).map_err(|e| {
                        StreamFailure::Retry(format!(
                            "a tool call's input was not valid JSON ({e})"
                        ))
                    })?;
                }
            }
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_string());
                }
                self.add_usage(&event["usage"]);
            }
            "message_stop" => self.finished = true,
            "error" => {
                let kind = event["error"]["type"].as_str().unwrap_or("error");
                let message = event["error"]["message"].as_str().unwrap_or("").to_string();
                return Err(match kind {
                    "overloaded_error" | "api_error" | "rate_limit_error" => {
                        StreamFailure::Retry(format!("{kind}: {message}"))
                    }
                    "authentication_error" | "permission_error" => {
                        StreamFailure::Fail(LlmError::Auth(message))
                    }
                    _ => StreamFailure::Fail(LlmError::BadRequest(format!("{kind}: {message}"))),
                });
            }
            _ => {} // ping and anything new
        }
        Ok(())
    }

    fn add_usage(&mut self, usage: &Value) {
        let get = |k: &str| usage[k].as_u64();
        if let Some(v) = get("input_tokens") {
            self.usage.input_tokens = v;
        }
        if let Some(v) = get("output_tokens") {
            self.usage.output_tokens = v;
        }
        if let Some(v) = get("cache_read_input_tokens") {
            self.usage.cache_read_input_tokens = v;
        }
        if let Some(v) = get("cache_creation_input_tokens") {
            self.usage.cache_creation_input_tokens = v;
        }
    }

    fn into_response(self) -> Option<ChatResponse> {
        if !self.started || !self.finished {
            return None;
        }
        Some(ChatResponse {
            content: self.blocks.into_iter().filter(|b| !b.is_null()).collect(),
            stop_reason: self.stop_reason.unwrap_or_else(|| "end_turn".into()),
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_text_and_tool_calls_from_deltas() {
        let mut s = StreamState::default();
        let events = [
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"Bash","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"comm"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"and\":\"ls\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":20}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        for e in events {
            assert!(s.apply(e).is_ok(), "{e}");
        }
        let r = s.into_response().expect("complete");
        assert_eq!(r.text(), "Hello");
        assert_eq!(
            r.tool_uses(),
            [(
                "t1".to_string(),
                "Bash".to_string(),
                json!({"command": "ls"})
            )]
        );
        assert_eq!(r.stop_reason, "tool_use");
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (10, 20));
    }

    #[test]
    fn error_events_are_classified() {
        let mut s = StreamState::default();
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(s.apply(overloaded), Err(StreamFailure::Retry(_))));
        let invalid =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        assert!(matches!(
            s.apply(invalid),
            Err(StreamFailure::Fail(LlmError::BadRequest(_)))
        ));
    }

    #[test]
    fn cache_control_marks_the_stable_prefix_and_the_tail() {
        let client = super::super::http_client().build().expect("client");
        let a = Anthropic::new(
            client,
            "http://x",
            "k",
            "m",
            Retry::default(),
            std::time::Duration::from_secs(300),
        );
        let messages = [json!({"role": "user", "content": [{"type": "text", "text": "hi"}]})];
        let tools = [json!({"name": "A"}), json!({"name": "B"})];
        let body = a.body(&ChatRequest {
            system: "sys",
            messages: &messages,
            tools: &tools,
            max_tokens: 100,
        });
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert!(body["tools"][0].get("cache_control").is_none());
        assert_eq!(body["tools"][1]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(body["stream"], true);
    }
}
