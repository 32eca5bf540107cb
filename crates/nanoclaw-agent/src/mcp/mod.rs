//! The Model Context Protocol both ways (SPEC §9.1): [`server`] offers the NanoClaw tools
//! to another harness over stdio, [`client`] gives our loop the tools of the MCP servers a
//! group configures.
//!
//! Both speak JSON-RPC 2.0 framed as one JSON object per line (the MCP stdio transport;
//! the streamable-HTTP transport carries the same messages). Written here rather than
//! taken from the `rmcp` SDK: the subset we need (initialize, ping, tools/list,
//! tools/call, cancellation) is small, and owning the framing lets every read be capped
//! and every wait be bounded. The tests hold both sides to the official TypeScript SDK
//! (decisions §52).

pub mod client;
pub mod server;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The protocol revisions we speak, newest first. A peer asking for another one gets the
/// newest, as the specification says.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26", "2024-11-05"];

/// Longest JSON-RPC message read from a peer.
pub const MAX_MESSAGE: usize = 8 << 20;

/// JSON-RPC error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// One line read with at most `max` bytes. `Ok(None)` at the end of the stream; a longer
/// line is an error (the rest of it is not read: the peer is broken or hostile, and the
/// stream cannot be resynchronised safely).
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() { None } else { Some(line) });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > max {
            return Err(std::io::Error::other(format!(
                "a message longer than {max} bytes"
            )));
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(line));
        }
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// A JSON-RPC success response.
pub fn result_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_and_capped() {
        let data = b"{\"a\":1}\n{\"b\":2}\npartial".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(3, &data[..]);
        assert_eq!(
            read_line(&mut r, 100).await.ok().flatten(),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            read_line(&mut r, 100).await.ok().flatten(),
            Some(b"{\"b\":2}".to_vec())
        );
        assert_eq!(
            read_line(&mut r, 100).await.ok().flatten(),
            Some(b"partial".to_vec())
        );
        assert_eq!(read_line(&mut r, 100).await.ok().flatten(), None);
        let long = [b'x'; 50];
        let mut r = tokio::io::BufReader::with_capacity(8, &long[..]);
        let err = read_line(&mut r, 20).await.err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("longer than 20")));
    }
}
