//! Credential proxy numbers: `cargo bench -p nanoclaw --bench proxy`.
//!
//! 1. Added latency: the same small Messages request sent directly to a local upstream,
//!    through the proxy's loopback listener, and through a run's own Unix socket (the
//!    agent's path), keep-alive clients on every path, 1000 each, interleaved.
//! 2. Concurrent SSE streams: N runs (each its own socket, as separate agents) each hold
//!    a stream open through the proxy while the upstream sends an event to every stream
//!    every 100 ms for 2 s; a level passes when every client receives all its events.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::IntoResponse;
use nanoclaw::config::{Config, Secret, Secrets};
use nanoclaw::proxy::{Proxy, RunIdentity, RunTokens};

const EVENTS: usize = 20;
const EVENT_EVERY: Duration = Duration::from_millis(100);

async fn upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(|body: String| async move {
            if body.contains("\"stream\":true") {
                let stream = futures_util::stream::unfold(0usize, |i| async move {
                    if i == EVENTS {
                        return None;
                    }
                    tokio::time::sleep(EVENT_EVERY).await;
                    let event = format!(
                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{i}\"}}}}\n\n"
                    );
                    Some((Ok::<_, std::io::Error>(event), i + 1))
                });
                ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
            } else {
                (
                    [("content-type", "application/json")],
                    r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":2}}"#,
                )
                    .into_response()
            }
        }),
    );
    nanoclaw_test_support::serve_on_loopback(app, "fake upstream")
        .await
        .0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn send(client: &reqwest::Client, url: &str, key: &str, stream: bool) -> reqwest::Response {
    client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"m","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .expect("response")
}

#[tokio::main]
async fn main() {
    let upstream = upstream().await;
    let root = tempfile::tempdir().expect("temp dir");
    let env = std::collections::HashMap::from([
        ("TZ".to_string(), "UTC".to_string()),
        (
            "HOME".to_string(),
            root.path().join("home").display().to_string(),
        ),
    ]);
    let (mut config, _) = Config::load(root.path(), &env).expect("config");
    config.credential_proxy_port = 0;
    config.anthropic_base_url = upstream.clone();
    nanoclaw::layout::Layout::new(root.path())
        .create()
        .expect("layout");
    let secrets = Secrets {
        anthropic_api_key: Some(Secret::new("sk-real")),
        ..Default::default()
    };
    let tokens: Arc<RunTokens> = Arc::default();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let proxy = Proxy::start(&config, &secrets, Arc::clone(&tokens), None, stop_rx)
        .await
        .expect("proxy");
    let via = format!("http://{}", proxy.tcp_addr);
    let sockets = tempfile::tempdir().expect("socket dir");
    let run = tokens
        .open_run(
            RunIdentity {
                group_folder: "bench".into(),
                run_id: "r".into(),
                ..Default::default()
            },
            &sockets.path().join("latency.sock"),
        )
        .expect("run socket");

    // 1. Added latency.
    let client = nanoclaw::tls::client().build().expect("client");
    let over_socket = nanoclaw::tls::client()
        .unix_socket(sockets.path().join("latency.sock"))
        .build()
        .expect("client");
    let (mut direct, mut tcp, mut socket) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..1050 {
        let t = Instant::now();
        let _ = send(&client, &upstream, "sk-real", false)
            .await
            .bytes()
            .await;
        let d = t.elapsed();
        let t = Instant::now();
        let _ = send(&client, &via, &run.token, false).await.bytes().await;
        let p = t.elapsed();
        let t = Instant::now();
        let _ = send(&over_socket, "http://proxy", &run.token, false)
            .await
            .bytes()
            .await;
        let u = t.elapsed();
        if i >= 50 {
            direct.push(d);
            tcp.push(p);
            socket.push(u);
        }
    }
    direct.sort();
    for (name, proxied) in [("loopback TCP", &mut tcp), ("a run's socket", &mut socket)] {
        proxied.sort();
        println!(
            "request latency ({} each): direct median {:.3} ms p99 {:.3} ms; via {name} median {:.3} ms p99 {:.3} ms; added median {:.3} ms, p99 {:.3} ms",
            direct.len(),
            ms(common::percentile(&direct, 0.5)),
            ms(common::percentile(&direct, 0.99)),
            ms(common::percentile(proxied, 0.5)),
            ms(common::percentile(proxied, 0.99)),
            ms(common::percentile(proxied, 0.5).saturating_sub(common::percentile(&direct, 0.5))),
            ms(common::percentile(proxied, 0.99).saturating_sub(common::percentile(&direct, 0.99))),
        );
    }

    // 2. Concurrent SSE streams.
    for n in [100usize, 500, 1000, 2000] {
        let started = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            // One run per stream, each with its own socket, as separate agents would be.
            let path = sockets.path().join(format!("s{n}-{i}.sock"));
            let run = tokens
                .open_run(
                    RunIdentity {
                        group_folder: "bench".into(),
                        run_id: format!("r{i}"),
                        ..Default::default()
                    },
                    &path,
                )
                .expect("run socket");
            handles.push(tokio::spawn(async move {
                let client = nanoclaw::tls::client()
                    .unix_socket(path)
                    .build()
                    .expect("client");
                let mut response = send(&client, "http://proxy", &run.token, true).await;
                let mut text = String::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                }
                text.matches("content_block_delta\ndata").count()
            }));
        }
        let mut complete = 0;
        for h in handles {
            if h.await.unwrap_or(0) == EVENTS {
                complete += 1;
            }
        }
        println!(
            "{n} concurrent SSE streams through the proxy: {complete} complete with all {EVENTS} events, in {:.2} s (ideal {:.2} s)",
            started.elapsed().as_secs_f64(),
            (EVENT_EVERY * EVENTS as u32).as_secs_f64()
        );
        if complete < n {
            break;
        }
    }
}
