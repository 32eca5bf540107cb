//! Token usage read from model responses as they stream through the proxy (SPEC §11).
//!
//! Anthropic streams report usage in `message_start` (input and cache counts) and
//! `message_delta` (cumulative output, and in newer API versions the final input and
//! cache counts too); non-streaming responses carry one `usage` object. OpenAI-compatible
//! servers report `prompt_tokens` (of which `prompt_tokens_details.cached_tokens` were
//! cached) and `completion_tokens`. Nothing is buffered beyond one SSE line, or the
//! first [`MAX_JSON_BYTES`] of a JSON body.

use std::sync::Arc;

use serde_json::Value;

use crate::store::{Store, Usage};

/// Longest SSE line looked at (longer ones are passed through unread).
const MAX_LINE_BYTES: usize = 1 << 20;
/// Largest JSON response body looked at.
const MAX_JSON_BYTES: usize = 4 << 20;

/// Accumulates usage from one response.
#[derive(Debug, Default)]
pub struct UsageReader {
    sse: bool,
    pending: Vec<u8>,
    overflow: bool,
    usage: Usage,
    model: Option<String>,
    /// The response said it was done (`message_stop`, `[DONE]`, a whole JSON body).
    complete: bool,
}

impl UsageReader {
    pub fn new(sse: bool) -> UsageReader {
        UsageReader {
            sse,
            ..Default::default()
        }
    }

    /// Looks at the next chunk of the body (which is forwarded unchanged).
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.pending.len() + chunk.len() <= MAX_JSON_BYTES {
                self.pending.extend_from_slice(chunk);
            } else {
                self.overflow = true;
            }
            return;
        }
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if !self.overflow {
                self.pending.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line);
            }
            self.pending.clear();
            self.overflow = false;
            rest = &rest[i + 1..];
        }
        if self.pending.len() + rest.len() > MAX_LINE_BYTES {
            self.overflow = true;
            self.pending.clear();
        } else if !self.overflow {
            self.pending.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if data.trim_ascii() == b"[DONE]" {
            self.complete = true;
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.absorb(&v);
        }
    }

    fn absorb(&mut self, v: &Value) {
        if v["type"] == "message_stop" {
            self.complete = true;
        }
        if let Some(model) = v["message"]["model"].as_str().or(v["model"].as_str()) {
            self.model = Some(model.to_string());
        }
        for usage in [&v["message"]["usage"], &v["usage"]] {
            if usage.is_object() {
                self.absorb_usage(usage);
            }
        }
    }

    /// Counts present in `u` replace earlier ones (stream counts are cumulative).
    fn absorb_usage(&mut self, u: &Value) {
        let n = |key: &str| u[key].as_i64();
        if let Some(v) = n("input_tokens") {
            self.usage.input_tokens = v;
        }
        if let Some(v) = n("output_tokens") {
            self.usage.output_tokens = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.usage.cache_read_tokens = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.usage.cache_write_tokens = v;
        }
        // OpenAI-compatible.
        if let Some(prompt) = n("prompt_tokens") {
            let cached = u["prompt_tokens_details"]["cached_tokens"]
                .as_i64()
                .unwrap_or(0);
            self.usage.input_tokens = prompt - cached;
            self.usage.cache_read_tokens = cached;
        }
        if let Some(v) = n("completion_tokens") {
            self.usage.output_tokens = v;
        }
    }

    /// The usage seen, once the body has ended.
    #[cfg(test)]
    pub fn finish(self) -> (Usage, Option<String>) {
        let (usage, model, _) = self.finish_all();
        (usage, model)
    }

    /// The usage seen, the model, and whether the response was complete.
    pub fn finish_all(mut self) -> (Usage, Option<String>, bool) {
        if self.sse {
            let line = std::mem::take(&mut self.pending);
            if !self.overflow {
                self.line(&line);
            }
        } else if !self.overflow
            && let Ok(v) = serde_json::from_slice::<Value>(&self.pending)
        {
            self.absorb(&v);
            self.complete = true;
        }
        (self.usage, self.model, self.complete)
    }
}

/// Records the usage of one response when dropped (the body ended or the client left).
pub struct UsageRecorder {
    pub reader: Option<UsageReader>,
    pub store: Arc<Store>,
    pub group_folder: String,
    pub run_id: String,
    /// A budgeted request's reservation: released once the usage is stored, and charged
    /// whole when the response ended before saying what it used.
    pub reservation: Option<super::budget::Reservation>,
}

impl Drop for UsageRecorder {
    fn drop(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let (usage, model, complete) = reader.finish_all();
        let reservation = self.reservation.take();
        let usage = match &reservation {
            Some(r) => super::budget::charge(usage, complete, r),
            None => usage,
        };
        if usage.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let (folder, run_id) = (self.group_folder.clone(), self.run_id.clone());
        let record = move || {
            let store_it = || {
                if let Err(e) = store.record_usage(&folder, &run_id, model.as_deref(), &usage) {
                    tracing::warn!(group = %folder, "cannot record token usage: {e}");
                }
            };
            // Stored and released together, so the tokens are counted once throughout.
            match reservation {
                Some(r) => r.settle(store_it),
                None => store_it(),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(record);
            }
            Err(_) => record(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sse: bool, chunks: &[&str]) -> (Usage, Option<String>) {
        let mut r = UsageReader::new(sse);
        for c in chunks {
            r.feed(c.as_bytes());
        }
        r.finish()
    }

    #[test]
    fn anthropic_stream_split_anywhere() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":120,\"cache_creation_input_tokens\":30,\"cache_read_input_tokens\":400,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage: 5\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":57}}\r\n\r\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let want = Usage {
            input_tokens: 120,
            output_tokens: 57,
            cache_read_tokens: 400,
            cache_write_tokens: 30,
        };
        // Every split point, including inside lines and inside `\r\n`.
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let (usage, model) = read(true, &[a, b]);
            assert_eq!(usage, want, "cut at {cut}");
            assert_eq!(model.as_deref(), Some("claude-x"));
        }
    }

    #[test]
    fn json_responses_of_both_apis() {
        let (u, m) = read(
            false,
            &[
                r#"{"id":"msg_1","model":"claude-y","usage":{"input_tokens":10,"#,
                r#""output_tokens":20,"cache_read_input_tokens":5}}"#,
            ],
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_read_tokens: 5,
                cache_write_tokens: 0
            }
        );
        assert_eq!(m.as_deref(), Some("claude-y"));
        let (u, m) = read(
            false,
            &[
                r#"{"model":"llama3","usage":{"prompt_tokens":100,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":60}}}"#,
            ],
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 40,
                output_tokens: 7,
                cache_read_tokens: 60,
                cache_write_tokens: 0
            }
        );
        assert_eq!(m.as_deref(), Some("llama3"));
    }

    #[test]
    fn garbage_and_huge_lines_are_ignored() {
        let huge = format!("data: {}\n", "x".repeat(MAX_LINE_BYTES + 10));
        let mut chunks = vec!["data: not json\n"];
        // Fed in pieces, so the line grows past the limit before its end arrives.
        chunks.extend(
            huge.as_bytes()
                .chunks(100_000)
                .map(|c| std::str::from_utf8(c).expect("ascii")),
        );
        chunks.push("data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n");
        let (u, _) = read(true, &chunks);
        assert_eq!(u.output_tokens, 3);
        let (u, _) = read(false, &["{\"usage\": "]);
        assert!(u.is_empty(), "a cut-off body records nothing");
    }
}
