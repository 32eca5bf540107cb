//! OpenAI-compatible chat completions (`POST {base}/v1/chat/completions`), for local and
//! third-party models (Ollama, llama.cpp, vLLM, …). The conversation is translated from
//! the Anthropic block format and back; server-side tools are not offered.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    ChatRequest, ChatResponse, Llm, LlmError, Retry, Usage, error_message, retry_after, retryable,
};

pub struct OpenAi {
    client: reqwest::Client,
    base_url: String,
    api_key: String,
    model: String,
    retry: Retry,
}

impl OpenAi {
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        api_key: &str,
        model: &str,
        retry: Retry,
    ) -> OpenAi {
        OpenAi {
            client,
            base_url: base_url
                .trim_end_matches('/')
                .trim_end_matches("/v1")
                .to_string(),
            api_key: api_key.to_string(),
            model: model.to_string(),
            retry,
        }
    }
}

/// Anthropic-format messages → OpenAI chat messages.
pub fn to_openai_messages(system: &str, messages: &[Value]) -> Vec<Value> {
    let mut out = vec![json!({"role": "system", "content": system})];
    for m in messages {
        let blocks = m["content"].as_array().cloned().unwrap_or_default();
        let text: String = blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if m["role"] == "assistant" {
            let calls: Vec<Value> = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| {
                    json!({"id": b["id"], "type": "function",
                           "function": {"name": b["name"], "arguments": b["input"].to_string()}})
                })
                .collect();
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            out.push(msg);
        } else {
            for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}),
                );
            }
            // Images go as data URLs beside the text (the chat-completions format).
            let images: Vec<Value> = blocks
                .iter()
                .filter(|b| b["type"] == "image" && b["source"]["type"] == "base64")
                .map(|b| {
                    let url = format!(
                        "data:{};base64,{}",
                        b["source"]["media_type"].as_str().unwrap_or("image/png"),
                        b["source"]["data"].as_str().unwrap_or("")
                    );
                    json!({"type": "image_url", "image_url": {"url": url}})
                })
                .collect();
            if !images.is_empty() {
                let mut parts = vec![json!({"type": "text", "text": text})];
                parts.extend(images);
                out.push(json!({"role": "user", "content": parts}));
            } else if !text.is_empty() {
                out.push(json!({"role": "user", "content": text}));
            }
        }
    }
    out
}

/// Anthropic-format client tools → OpenAI functions (server tools are dropped).
pub fn to_openai_tools(tools: &[Value]) -> Vec<Value> {
    tools
        .iter()
        .filter(|t| t.get("input_schema").is_some())
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t["name"], "description": t["description"], "parameters": t["input_schema"]}})
        })
        .collect()
}

/// An OpenAI completion → the Anthropic-format response.
pub fn from_openai(body: &Value) -> Result<ChatResponse, String> {
    let choice = &body["choices"][0];
    let message = choice
        .get("message")
        .ok_or("the response has no choices[0].message")?;
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value =
            serde_json::from_str(arguments).unwrap_or_else(|_| json!({"_unparsed": arguments}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    let stop_reason = match choice["finish_reason"].as_str() {
        Some("tool_calls") => "tool_use",
        Some("length") => "max_tokens",
        _ if content.iter().any(|b| b["type"] == "tool_use") => "tool_use",
        _ => "end_turn",
    };
    Ok(ChatResponse {
        content,
        stop_reason: stop_reason.into(),
        usage: Usage {
            input_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            ..Default::default()
        },
    })
}

#[async_trait]
impl Llm for OpenAi {
    async fn complete(&self, request: &ChatRequest<'_>) -> Result<ChatResponse, LlmError> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_openai_messages(request.system, request.messages),
        });
        let tools = to_openai_tools(request.tools);
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            let sent = self
                .client
                .post(format!("{}/v1/chat/completions", self.base_url))
                .bearer_auth(&self.api_key)
                .json(&body)
                .send()
                .await;
            let (problem, after) = match sent {
                Err(e) => (format!("cannot reach the API ({e})"), None),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let after = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    match status {
                        200 => {
                            let value: Value = serde_json::from_str(&text).map_err(|e| {
                                LlmError::Unavailable(format!("unreadable response ({e})"))
                            })?;
                            return from_openai(&value).map_err(LlmError::Unavailable);
                        }
                        401 | 403 => {
                            return Err(LlmError::Auth(format!(
                                "HTTP {status}: {}",
                                error_message(&text)
                            )));
                        }
                        s if retryable(s) => {
                            (format!("HTTP {status}: {}", error_message(&text)), after)
                        }
                        _ => {
                            return Err(LlmError::BadRequest(format!(
                                "HTTP {status}: {}",
                                error_message(&text)
                            )));
                        }
                    }
                }
            };
            last = problem;
            if attempt < self.retry.attempts {
                tokio::time::sleep(self.retry.delay(attempt, after)).await;
            }
        }
        Err(LlmError::Unavailable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_go_as_data_urls_beside_the_text() {
        let messages = [json!({"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        ]})];
        let out = to_openai_messages("sys", &messages);
        assert_eq!(
            out[1],
            json!({"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            ]})
        );
    }

    #[test]
    fn translates_a_tool_round_trip() {
        let messages = [
            json!({"role": "user", "content": [{"type": "text", "text": "list files"}]}),
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "sure"},
                {"type": "tool_use", "id": "c1", "name": "Bash", "input": {"command": "ls"}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "a\nb"}]}),
        ];
        let out = to_openai_messages("sys", &messages);
        assert_eq!(out[0], json!({"role": "system", "content": "sys"}));
        assert_eq!(out[1], json!({"role": "user", "content": "list files"}));
        assert_eq!(
            out[2]["tool_calls"][0]["function"]["arguments"],
            "{\"command\":\"ls\"}"
        );
        assert_eq!(
            out[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "a\nb"})
        );

        let reply = json!({"choices": [{"finish_reason": "tool_calls", "message": {"content": null,
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "Read", "arguments": "{\"file_path\":\"x\"}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}});
        let r = from_openai(&reply).expect("valid");
        assert_eq!(r.stop_reason, "tool_use");
        assert_eq!(r.tool_uses()[0].2, json!({"file_path": "x"}));
        let tools = to_openai_tools(&[
            json!({"name": "Bash", "description": "d", "input_schema": {"type": "object"}}),
            json!({"type": "web_search_20250305", "name": "web_search"}),
        ]);
        assert_eq!(tools.len(), 1, "server tools are not offered");
    }
}
