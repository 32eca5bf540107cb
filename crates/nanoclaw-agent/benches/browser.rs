//! The Browser tool's latency (issue 17): navigate to a page and snapshot it (what one
//! `navigate` action does), median and p90 over 30 navigations between two local pages,
//! plus the browser's start. Needs a Chromium on this machine (Debian's `chromium`).
//! Run: `cargo bench -p nanoclaw-agent --bench browser`.

#[path = "../src/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;

/// A page like a small article with a form and links.
fn page(n: usize) -> String {
    let mut body = format!(
        "<title>Page {n}</title><h1>Page {n}</h1><form><input name=q><button>Go</button></form>"
    );
    for i in 0..40 {
        body.push_str(&format!(
            "<p>Paragraph {i} of page {n}: some text to read, with a <a href=\"/{}\">link</a>.</p>",
            (n + 1) % 2
        ));
    }
    body
}

/// A one-thread HTTP server on loopback: `/0` and `/1`.
fn serve() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let which = if request.starts_with("GET /1") { 1 } else { 0 };
            let body = page(which);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn main() {
    if browser::binary().is_none() {
        println!("no Chromium on this machine (apt install chromium): nothing measured");
        return;
    }
    let port = serve();
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let mut b = browser::Browser::start(dir.path()).await.expect("browser");
        let start = started.elapsed();
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..31 {
            let url = format!("http://127.0.0.1:{port}/{}", i % 2);
            let t = Instant::now();
            b.page("Page.navigate", json!({"url": url})).await.expect("navigate");
            b.settle(Duration::ZERO).await;
            let snapshot = b.eval(browser::SNAPSHOT_JS).await.expect("snapshot");
            assert!(snapshot["items"].as_array().is_some_and(|a| a.len() > 40));
            if i > 0 {
                times.push(t.elapsed());
            }
        }
        times.sort();
        println!(
            "browser start: {:.0} ms; navigate + snapshot over {} navigations: median {:.1} ms, p90 {:.1} ms",
            start.as_secs_f64() * 1000.0,
            times.len(),
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[(times.len() * 9) / 10].as_secs_f64() * 1000.0,
        );
        b.close().await;
    });
}
