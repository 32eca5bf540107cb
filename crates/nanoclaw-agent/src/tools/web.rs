//! `WebFetch`: GET a URL (http or https) and return it as text (HTML converted).

use std::time::Duration;

use serde_json::Value;

use super::{MAX_OUTPUT_CHARS, ToolOutput, string, truncate_middle};

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 5 << 20;

pub async fn fetch(input: &Value) -> Result<ToolOutput, ToolOutput> {
    let url = string(input, "url")?;
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ToolOutput::error(format!("`{url}` is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ToolOutput::error(format!(
            "only http and https URLs can be fetched, not {}",
            parsed.scheme()
        )));
    }
    let client = crate::llm::http_client()
        .timeout(TIMEOUT)
        .user_agent("nanoclaw-agent (WebFetch)")
        .build()
        .map_err(|e| ToolOutput::error(format!("cannot create an HTTP client: {e}")))?;
    let mut response = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| ToolOutput::error(format!("cannot fetch {url}: {e}")))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ToolOutput::error(format!("the download from {url} broke: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            body.truncate(MAX_BODY);
            break;
        }
    }
    if body.contains(&0) && !content_type.starts_with("text/") {
        return Ok(ToolOutput::ok(format!(
            "{url} returned {} bytes of binary content ({content_type}); not shown",
            body.len()
        )));
    }
    let raw = String::from_utf8_lossy(&body);
    let text = if content_type.contains("html") || raw.trim_start().starts_with('<') {
        html_to_text(&raw)
    } else {
        raw.into_owned()
    };
    let text = truncate_middle(text.trim(), MAX_OUTPUT_CHARS);
    if status.is_success() {
        Ok(ToolOutput::ok(text))
    } else {
        Err(ToolOutput::error(format!(
            "{url} answered HTTP {status}:\n{text}"
        )))
    }
}

/// A plain-text rendering of HTML: scripts, styles and comments dropped, block elements
/// on their own lines, entities decoded, whitespace collapsed.
pub fn html_to_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() / 2);
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < html.len() {
        if bytes[i] == b'<' {
            if lower[i..].starts_with("<!--") {
                i = lower[i..].find("-->").map_or(html.len(), |e| i + e + 3);
                continue;
            }
            let end = match html[i..].find('>') {
                Some(e) => i + e + 1,
                None => break,
            };
            let tag = lower[i + 1..end - 1].trim_start_matches('/');
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if matches!(
                name.as_str(),
                "script" | "style" | "noscript" | "template" | "svg"
            ) && !lower[i + 1..].starts_with('/')
            {
                let close = format!("</{name}");
                i = lower[end..].find(&close).map_or(html.len(), |c| end + c);
                i = lower[i..].find('>').map_or(html.len(), |c| i + c + 1);
                continue;
            }
            if matches!(
                name.as_str(),
                "br" | "p"
                    | "div"
                    | "li"
                    | "tr"
                    | "h1"
                    | "h2"
                    | "h3"
                    | "h4"
                    | "h5"
                    | "h6"
                    | "section"
                    | "article"
                    | "header"
                    | "footer"
                    | "ul"
                    | "ol"
                    | "table"
                    | "blockquote"
                    | "pre"
                    | "title"
            ) {
                out.push('\n');
            }
            if name == "li" && !lower[i + 1..].starts_with('/') {
                out.push_str("- ");
            }
            i = end;
            continue;
        }
        let next = html[i..].find('<').map_or(html.len(), |n| i + n);
        out.push_str(&decode_entities(&html[i..next]));
        i = next;
    }
    let mut lines: Vec<String> = Vec::new();
    for line in out.lines() {
        let collapsed = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if collapsed.is_empty() {
            if lines.last().is_some_and(|l| !l.is_empty()) {
                lines.push(String::new());
            }
        } else {
            lines.push(collapsed);
        }
    }
    lines.join("\n").trim().to_string()
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &after[..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                _ if name.starts_with("#x") || name.starts_with("#X") => {
                    u32::from_str_radix(&name[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn html_becomes_readable_text() {
        let html = r#"<html><head><title>T</title><style>p{color:red}</style><script>alert("x<y")</script></head>
            <body><!-- hidden --><h1>Hello &amp; welcome</h1><p>First&nbsp;para with <b>bold</b>.</p>
            <ul><li>one</li><li>two &#x263A;</li></ul></body></html>"#;
        let text = html_to_text(html);
        assert!(text.contains("Hello & welcome"), "{text}");
        assert!(text.contains("First para with bold."), "{text}");
        assert!(text.contains("- one") && text.contains("- two ☺"), "{text}");
        assert!(
            !text.contains("alert") && !text.contains("color") && !text.contains("hidden"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn fetches_a_page_from_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let body = "<p>It <i>works</i></p>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        let out = fetch(&json!({"url": format!("http://{addr}/page")}))
            .await
            .expect("fetched");
        assert_eq!(out.content, "It works");
        let e = fetch(&json!({"url": "file:///etc/passwd"}))
            .await
            .expect_err("scheme");
        assert!(e.content.contains("only http and https"));
    }
}
