//! `memory_search` over 100,000 messages (issue 17): how long the first index build
//! takes, a search once the index is current (median and p90 of 50 different queries),
//! and a search right after the current session changed (the usual case: the transcript
//! is rewritten every turn). Run: `cargo bench -p nanoclaw-agent --bench memory`.

#[path = "../src/memory.rs"]
#[allow(dead_code)]
mod memory;

use std::time::{Duration, Instant};

const MESSAGES: usize = 100_000;
const PER_SESSION: usize = 1_000;
const WORDS: &[&str] = &[
    "dinner", "garden", "invoice", "train", "doctor", "birthday", "holiday", "printer", "recipe",
    "school", "meeting", "parcel", "weather", "football", "concert", "bicycle",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sources = memory::Sources {
        group: dir.path().join("group"),
        global: dir.path().join("global"),
        sessions: dir.path().join("home/.claude/nanoclaw/sessions"),
        index: dir.path().join("home/.claude/nanoclaw/memory.db"),
    };
    std::fs::create_dir_all(sources.group.join("conversations")).expect("dirs");
    std::fs::create_dir_all(&sources.sessions).expect("dirs");
    for s in 0..MESSAGES / PER_SESSION {
        let mut text = String::from("<messages>");
        for m in 0..PER_SESSION {
            let i = s * PER_SESSION + m;
            text.push_str(&format!(
                "<message sender=\"Jo\" time=\"2026-{:02}-{:02}T10:00:00Z\">about the {} and the {} number {i}</message>",
                1 + i % 12,
                1 + i % 28,
                WORDS[i % WORDS.len()],
                WORDS[(i / 7) % WORDS.len()]
            ));
        }
        text.push_str("</messages>");
        let session = serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]});
        std::fs::write(
            sources.sessions.join(format!("s{s}.json")),
            session.to_string(),
        )
        .expect("session");
    }
    let started = Instant::now();
    let read = memory::refresh(&sources).expect("index");
    let build = started.elapsed();

    let mut times = Vec::new();
    for q in 0..50 {
        let query = format!("{} {}", WORDS[q % WORDS.len()], 1000 + q * 997);
        let started = Instant::now();
        let hits = memory::search(&sources, &query, 5).expect("search");
        times.push(started.elapsed());
        assert!(!hits.is_empty());
    }
    times.sort();

    let mut after_change = Vec::new();
    for round in 0..10 {
        let session = serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text",
            "text": format!("<messages><message sender=\"Jo\" time=\"2026-12-01T10:00:00Z\">the piano lesson {round}</message></messages>")}]}]});
        std::fs::write(sources.sessions.join("current.json"), session.to_string())
            .expect("current");
        let started = Instant::now();
        let hits = memory::search(&sources, "piano lesson", 5).expect("search");
        after_change.push(started.elapsed());
        assert!(!hits.is_empty());
    }
    after_change.sort();
    let index_bytes = std::fs::metadata(&sources.index)
        .map(|m| m.len())
        .unwrap_or(0);
    println!("memory_search over {MESSAGES} messages in {read} session files:");
    println!(
        "  first index build: {:.2} s, index {:.1} MiB",
        build.as_secs_f64(),
        index_bytes as f64 / f64::from(1u32 << 20)
    );
    println!(
        "  search, index current: median {:.2} ms, p90 {:.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3
    );
    println!(
        "  search after the current session changed: median {:.2} ms",
        percentile(&after_change, 0.5).as_secs_f64() * 1e3
    );
}
