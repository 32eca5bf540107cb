//! An incremental Server-Sent Events parser (the `text/event-stream` format).
//!
//! Shared by everything that reads SSE: the terminal chat (`/api/events`), the agent's
//! LLM client and the credential proxy's usage recorder. Feed it bytes as they arrive;
//! it returns the events completed so far and keeps partial ones for the next call.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type (`message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Adds bytes and returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buffer.drain(..end + skip).take(end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.current = SseEvent::default();
                return None;
            }
            self.has_data = false;
            return Some(std::mem::take(&mut self.current));
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.current.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However a stream is cut into reads, the same events come out (the first byte of
    /// the input picks the read size).
    #[test]
    fn fuzz_sse_events_do_not_depend_on_how_the_stream_is_cut() {
        nanoclaw_fuzz::fuzz(
            "sse",
            nanoclaw_fuzz::Shape::Bytes,
            &[
                "data: ", "event: ", "id: ", ": ", "\n", "\r\n", "\r", "\n\n", "data:",
            ],
            |input| {
                let (size, stream) = input
                    .split_first()
                    .map_or((1, &[][..]), |(s, r)| (*s as usize % 17 + 1, r));
                let whole = SseParser::new().push(stream);
                let mut p = SseParser::new();
                let mut cut = Vec::new();
                for chunk in stream.chunks(size) {
                    cut.extend(p.push(chunk));
                }
                assert_eq!(whole, cut, "read size {size}");
                for e in &whole {
                    assert!(!e.data.contains('\r'), "a line end inside data: {e:?}");
                }
            },
        );
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::new();
        let stream = b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 7\ndata: line1\ndata: line2\n\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(3) {
            events.extend(p.push(chunk));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into(),
                    id: None
                },
                SseEvent {
                    event: None,
                    data: "line1\nline2".into(),
                    id: Some("7".into())
                },
            ]
        );
    }

    #[test]
    fn accepts_crlf_and_cr_line_endings() {
        let mut p = SseParser::new();
        let mut events = p.push(b"data: a\r\n\r\ndata: b\r\r");
        events.extend(p.push(b"data:c\n\n"));
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b", "c"]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").is_empty());
        let e = p.push(b"data: x\n\n");
        assert_eq!(
            e[0].event, None,
            "fields of an undispatched event do not leak"
        );
    }
}
