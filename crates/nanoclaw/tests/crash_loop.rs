//! The crash loop (issue 18): the real daemon is killed with SIGKILL at a random moment,
//! again and again, while messages stream in on the web channel and the fake Telegram,
//! real bwrap sandboxes run the real agent against the fake model API, a task fires and
//! replies go out. After every kill it checks, from the store and from the fakes' own
//! records, that no message was answered twice and no reply was sent twice; at the end,
//! that every accepted message was answered exactly once and no task slot ran twice
//! (no run started before the slot the previous run had set).
//!
//! `NANOCLAW_CRASH_CYCLES` sets the number of cycles (default 100), `NANOCLAW_CRASH_SEED`
//! repeats a run.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nanoclaw_test_support::fake_anthropic::{FakeAnthropic, Reply};
use nanoclaw_test_support::fake_telegram::{Chat, FakeTelegram, User};
use nanoclaw_test_support::wait_for;
use serde_json::Value;
use support::BinaryDaemon;

const TOKEN: &str = "777:crash-loop";
const WEB: &str = "web:crash";
const TG_CHAT: i64 = -100_500;
const TASK_INTERVAL_MS: u64 = 4000;

/// The ids (`m00042`) in the newest user turn of a model request.
fn ids_in_last_turn(body: &Value) -> Vec<String> {
    let Some(turn) = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return Vec::new();
    };
    let text = match &turn["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    ids_in(&text)
}

fn ids_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut ids = Vec::new();
    for (i, _) in text.match_indices('m') {
        let digits = &bytes[i + 1..(i + 6).min(bytes.len())];
        if digits.len() == 5 && digits.iter().all(u8::is_ascii_digit) {
            ids.push(text[i..i + 6].to_string());
        }
    }
    ids
}

struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Every reply delivered so far, by the records of whoever received it: the web
/// channel's replies are the store's, Telegram's are what the fake Bot API accepted.
/// `committed` are the replies the store holds for the Telegram chat (each once).
fn delivered(root: &std::path::Path, tg: &FakeTelegram) -> Vec<String> {
    let store = support::open_store(root);
    let bot = |jid: &str| -> Vec<String> {
        store
            .chat_messages(jid, None)
            .expect("messages")
            .into_iter()
            .filter(|m| m.message.is_bot_message)
            .map(|m| m.message.content)
            .collect()
    };
    let mut replies: Vec<String> = bot(WEB).into_iter().map(|t| format!("web {t}")).collect();
    replies.extend(
        bot(&format!("tg:{TG_CHAT}"))
            .into_iter()
            .map(|t| format!("committed {t}")),
    );
    replies.extend(tg.sent(TG_CHAT).into_iter().map(|t| format!("tg {t}")));
    replies
}

/// The ids of every user message the store holds, in both chats.
fn stored_ids(root: &std::path::Path) -> Vec<String> {
    let store = support::open_store(root);
    [WEB.to_string(), format!("tg:{TG_CHAT}")]
        .iter()
        .flat_map(|jid| store.chat_messages(jid, None).expect("messages"))
        .filter(|m| !m.message.is_bot_message)
        .flat_map(|m| ids_in(&m.message.content))
        .collect()
}

/// What the records show: violations of "answered once, committed once, sent once",
/// and the Telegram replies sent twice because a kill landed between the Bot API
/// accepting a `sendMessage` and the outbox recording it (decisions §49: the Bot API
/// has no idempotency key, so that window cannot be closed without losing replies).
fn violations(replies: &[String]) -> (Vec<String>, Vec<String>) {
    let mut found = Vec::new();
    let mut resent = Vec::new();
    let mut texts: HashMap<&str, usize> = HashMap::new();
    let mut answered: HashMap<String, Vec<&str>> = HashMap::new();
    for r in replies {
        if r.ends_with(" re: the task") {
            continue;
        }
        *texts.entry(r.as_str()).or_default() += 1;
        if !r.starts_with("committed ") {
            for id in ids_in(r) {
                answered.entry(id).or_default().push(r.as_str());
            }
        }
    }
    for (text, n) in &texts {
        match (*n, text.starts_with("tg ")) {
            (1, _) => {}
            (2, true) => resent.push(text.to_string()),
            _ => found.push(format!("{n} times: {text:?}")),
        }
    }
    for (id, in_replies) in answered {
        let one_resent = in_replies.len() == 2
            && in_replies[0] == in_replies[1]
            && resent.iter().any(|r| r == in_replies[0]);
        if in_replies.len() > 1 && !one_resent {
            found.push(format!(
                "{id} answered {} times: {in_replies:?}",
                in_replies.len()
            ));
        }
    }
    found.sort();
    resent.sort();
    (found, resent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_again_and_again_loses_and_repeats_nothing() {
    let cycles: usize = std::env::var("NANOCLAW_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("NANOCLAW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!("crash loop: {cycles} cycles, NANOCLAW_CRASH_SEED={seed}");
    let mut rng = Xorshift(seed);

    let llm = FakeAnthropic::start(vec![]).await;
    llm.respond_with(|body| {
        let ids = ids_in_last_turn(body);
        if ids.is_empty() {
            Reply::text("re: the task")
        } else {
            Reply::text(&format!("re: {}", ids.join(" ")))
        }
    });
    let tg = FakeTelegram::start(TOKEN).await;
    let chat = Chat::group(TG_CHAT, "Crash");
    let ana = User::new(77, "Ana");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let env = [
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", tg.url.as_str()),
        ("ANTHROPIC_BASE_URL", llm.url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-crash"),
        ("IDLE_TIMEOUT", "1500"),
        ("NANOCLAW_MIN_TASK_INTERVAL_MS", "1000"),
    ];
    // The first start makes the layout and the store; then the chats are registered.
    BinaryDaemon::spawn(root, &env).await.terminate().await;
    support::register(root, WEB, "crash_web", false);
    support::register(root, &format!("tg:{TG_CHAT}"), "crash_tg", false);
    let origin = jiff::Timestamp::now();
    support::open_store(root)
        .insert_task(&nanoclaw::store::ScheduledTask {
            id: "task-tick".into(),
            group_folder: "crash_web".into(),
            chat_jid: WEB.into(),
            prompt: "the periodic task".into(),
            schedule_type: "interval".into(),
            schedule_value: TASK_INTERVAL_MS.to_string(),
            context_mode: "isolated".into(),
            next_run: Some(nanoclaw::clock::format_utc(origin)),
            last_run: None,
            last_result: None,
            status: "active".into(),
            created_at: nanoclaw::clock::now(),
        })
        .expect("task");

    let started = Instant::now();
    let mut next = 0u32;
    let mut accepted: Vec<String> = Vec::new();
    let mut web_accepted = 0usize;
    let mut all_violations: Vec<String> = Vec::new();
    let mut all_resent: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let d = BinaryDaemon::spawn(root, &env).await;
        let until = Instant::now() + Duration::from_millis(200 + rng.below(2500));
        while Instant::now() < until {
            next += 1;
            let id = format!("m{next:05}");
            if rng.below(2) == 0 {
                // Accepted once the daemon answers 202.
                if d.api.send(WEB, "me", "Me", &id).await.is_ok() {
                    accepted.push(id);
                    web_accepted += 1;
                }
            } else {
                // Telegram keeps an update until the bot confirms it: always accepted.
                tg.user_says(&chat, &ana, &id);
                accepted.push(id);
            }
            tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        }
        d.kill9().await;
        let (found, resent) = violations(&delivered(root, &tg));
        for r in resent {
            if !all_resent.contains(&r) {
                println!("cycle {cycle}: resent after the kill: {r:?}");
                all_resent.push(r);
            }
        }
        for v in found {
            if !all_violations.contains(&v) {
                println!("cycle {cycle}: {v}");
                all_violations.push(v);
            }
        }
    }

    // The last start: everything accepted gets its answer, once.
    let d = BinaryDaemon::spawn(root, &env).await;
    let replies = wait_for(
        "every accepted message answered",
        Duration::from_secs(180),
        || {
            let replies = delivered(root, &tg);
            // Answered means delivered: a Telegram reply counts once the fake has it,
            // not when it is committed.
            let answered: Vec<String> = replies
                .iter()
                .filter(|r| !r.starts_with("committed "))
                .flat_map(|r| ids_in(r))
                .collect();
            // Accepted, and also stored without a 202 (a kill during the request).
            let stored = stored_ids(root);
            let done = tg.pending_updates() == 0
                && accepted
                    .iter()
                    .chain(&stored)
                    .all(|id| answered.contains(id));
            async move { done.then_some(replies) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replies_after = delivered(root, &tg);
    // The task goes on firing; nothing else may come.
    let answers = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|r| !r.ends_with(" re: the task"))
            .cloned()
            .collect()
    };
    assert_eq!(
        answers(&replies_after),
        answers(&replies),
        "nothing more is sent once all is answered"
    );
    let (found, resent) = violations(&replies_after);
    all_violations.extend(found);
    all_resent.extend(resent);
    all_resent.sort();
    all_resent.dedup();
    all_violations.sort();
    all_violations.dedup();

    // Task slots: a run records itself and the task's next slot (the first slot
    // boundary after it ended) at once, so the next run may not start before that slot.
    // A slot run twice would.
    let runs = support::open_store(root)
        .task_runs("task-tick")
        .expect("task runs");
    let mut timed: Vec<(jiff::Timestamp, i64)> = runs
        .iter()
        .filter_map(|r| Some((r.run_at.parse().ok()?, r.duration_ms)))
        .collect();
    timed.sort();
    let interval = TASK_INTERVAL_MS as i64;
    for pair in timed.windows(2) {
        let ((start1, took1), (start2, _)) = (pair[0], pair[1]);
        let since_origin = start1.as_millisecond() + took1 - origin.as_millisecond();
        let next_slot =
            origin.as_millisecond() + (since_origin.div_euclid(interval) + 1) * interval;
        if start2.as_millisecond() + 50 < next_slot {
            all_violations.push(format!(
                "a task run at {start2} before its slot (the run at {start1} had set the next one {} ms later)",
                next_slot - start2.as_millisecond()
            ));
        }
    }
    d.terminate().await;
    let calls = llm.requests().len();
    println!(
        "crash loop: {cycles} cycles in {:.0} s, {} messages accepted ({} web), {} replies ({} to Telegram), {} task runs, {calls} model calls, {} violations, {} Telegram replies resent after a kill",
        started.elapsed().as_secs_f64(),
        accepted.len(),
        web_accepted,
        replies_after
            .iter()
            .filter(|r| !r.starts_with("committed "))
            .count(),
        tg.sent(TG_CHAT).len(),
        runs.len(),
        all_violations.len(),
        all_resent.len()
    );
    assert!(all_violations.is_empty(), "{all_violations:#?}");
    // At most the one reply in flight to the one Telegram chat when each kill landed.
    assert!(all_resent.len() <= cycles, "{all_resent:#?}");
}

#[test]
fn the_checks_see_a_repeated_answer_and_a_repeated_send() {
    let v = |r: &[&str]| violations(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        v(&["web re: m00001", "tg re: m00002", "committed re: m00002"]),
        (vec![], vec![])
    );
    let (found, _) = v(&["web re: m00001", "web re: m00001 m00002"]);
    assert_eq!(found.len(), 1, "answered in two replies: {found:?}");
    let (found, _) = v(&["web re: m00003", "web re: m00003"]);
    assert_eq!(found.len(), 2, "a web reply committed twice: {found:?}");
    let (found, resent) = v(&["tg re: m00004", "tg re: m00004", "committed re: m00004"]);
    assert!(
        found.is_empty() && resent == ["tg re: m00004"],
        "{found:?} {resent:?}"
    );
    let (found, _) = v(&[
        "committed re: m00005",
        "committed re: m00005",
        "tg re: m00005",
    ]);
    assert_eq!(
        found.len(),
        1,
        "a Telegram reply committed twice: {found:?}"
    );
    let (found, _) = v(&["tg re: m00006", "tg re: m00006", "tg re: m00006"]);
    assert_eq!(found.len(), 2, "sent three times: {found:?}");
    assert_eq!(
        ids_in("<message>m00042</message> m123 m1234567"),
        ["m00042", "m12345"]
    );
}
