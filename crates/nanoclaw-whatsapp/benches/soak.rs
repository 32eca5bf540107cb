//! Memory soak (issue 13, test 4): a long stream of client events through the channel
//! (the adapter's events in, the host's deliveries out), with the process's resident
//! memory sampled as it goes. NanoClaw's Node library grew to 4 GB in 40 hours
//! (NanoClaw #595); here RSS must level off once every chat has been seen.
//!
//! `cargo bench -p nanoclaw-whatsapp --bench soak [-- EVENTS]` (default 1,000,000).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use nanoclaw_channel::{Channel, ChannelHost, ChatMeta, Message};
use nanoclaw_whatsapp::adapter::{Account, Body, FakeClient, WaEvent, WaMessage};
use nanoclaw_whatsapp::channel::{Settings, WhatsApp};

/// Counts deliveries; keeps the channel's state as the real host would (in a map).
#[derive(Default)]
struct CountingHost {
    delivered: AtomicU64,
    state: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

#[async_trait]
impl ChannelHost for CountingHost {
    async fn deliver(&self, _chat: ChatMeta, _message: Message) -> Result<(), String> {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn chat_seen(&self, _chat: ChatMeta) -> Result<(), String> {
        Ok(())
    }
    async fn load_state(&self, key: &str) -> Result<Option<String>, String> {
        Ok(self
            .state
            .lock()
            .map_err(|e| e.to_string())?
            .get(key)
            .cloned())
    }
    async fn save_state(&self, key: &str, value: &str) -> Result<(), String> {
        self.state
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key.into(), value.into());
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Event `i` of the stream: people in both address forms, groups with mentions and
/// quotes, reactions, protocol messages, and now and then a history batch.
fn event(i: u64) -> WaEvent {
    let person = i % 1000;
    let pn = format!("1555{person:07}@s.whatsapp.net");
    let lid = format!("8{person:013}@lid");
    let group = format!("1203630000000{:05}@g.us", i % 50);
    let text = format!("message {i}: {}", "lorem ipsum ".repeat((i % 20) as usize));
    let mut m = WaMessage::text(&format!("3EB0{i:016X}"), &pn, &pn, false, &text);
    match i % 10 {
        0..=3 => {}
        4 => {
            m.chat = lid.clone();
            m.sender = lid;
            m.sender_alt = Some(pn);
        }
        5 | 6 => {
            m.chat = group;
            m.body = Body::Text {
                text,
                quoted: Some("an earlier message".into()),
                mentions: vec!["15550000000@s.whatsapp.net".into()],
                media: None,
            };
        }
        7 => m.body = Body::Reaction,
        8 => m.body = Body::Protocol,
        _ if i % 1000 == 9 => return WaEvent::History(vec![m.clone(), m.clone(), m]),
        _ => m.chat = "status@broadcast".into(),
    }
    WaEvent::Message(m)
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let (client, rx) = FakeClient::new();
    let channel = Arc::new(WhatsApp::new(
        Arc::clone(&client) as Arc<dyn nanoclaw_whatsapp::adapter::WaClient>,
        rx,
        Settings {
            assistant_name: "Andy".into(),
            read_receipts: true,
        },
    ));
    let host = Arc::new(CountingHost::default());
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let run =
        tokio::spawn(Arc::clone(&channel).run(Arc::clone(&host) as Arc<dyn ChannelHost>, stop_rx));
    client.event(WaEvent::Connected {
        account: Account {
            pn: "15550000000@s.whatsapp.net".into(),
            lid: Some("90000000000000@lid".into()),
            push_name: "Sam".into(),
        },
    });
    let start = Instant::now();
    let step = (events / 10).max(1);
    let mut samples = Vec::new();
    let mut want = 0;
    for i in 0..events {
        let e = event(i);
        want += deliveries(&e);
        client.event(e);
        // Events come as fast as the channel takes them, as from a socket; what stays
        // in memory is then the channel's own (not a backlog of this loop's making).
        if (i + 1) % 1000 == 0 {
            while host.delivered.load(Ordering::Relaxed) < want {
                tokio::task::yield_now().await;
            }
            // The fake keeps what it was asked to send (read receipts): not ours.
            client.clear_sent();
        }
        if (i + 1) % step == 0 {
            samples.push((i + 1, rss_kib()));
        }
    }
    println!(
        "{events} events in {:.1} s; {} messages delivered",
        start.elapsed().as_secs_f64(),
        host.delivered.load(Ordering::Relaxed)
    );
    println!("{:>10}  {:>9}", "events", "RSS KiB");
    for (n, rss) in &samples {
        println!("{n:>10}  {rss:>9}");
    }
    if let (Some(first), Some(last)) = (samples.get(1), samples.last()) {
        println!(
            "growth from the 2nd sample to the last: {} KiB",
            last.1 as i64 - first.1 as i64
        );
    }
    run.abort();
}

/// How many stored messages an event makes.
fn deliveries(event: &WaEvent) -> u64 {
    match event {
        WaEvent::Message(m) => {
            u64::from(matches!(m.body, Body::Text { .. }) && !m.chat.ends_with("broadcast"))
        }
        WaEvent::History(h) => h.len() as u64,
        _ => 0,
    }
}
