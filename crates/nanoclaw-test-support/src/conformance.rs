//! The channel conformance kit: behaviour every channel adapter must show, checked
//! against a running daemon (through its HTTP API) and the channel's fake platform
//! (through a [`ChannelHarness`] the channel's tests implement). Checks that do not apply
//! to a platform (a web chat has no typing indicator) are skipped, and say so.
//!
//! The daemon must run with a scripted agent that answers each run with the next text
//! given to [`ChannelHarness::next_reply`] (and a default otherwise), and the harness's
//! chat must be a registered group that needs the trigger.

use anyhow::Result;
use async_trait::async_trait;

use crate::{Api, DEADLINE, wait_for};

/// What happens to a message the bot itself wrote, seen on the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotEcho {
    /// The platform never shows a bot its own messages.
    NeverShown,
    /// The adapter stores it, marked as the bot's.
    StoredAsBot,
    /// The adapter drops it: the host already stored the reply when it committed it,
    /// so the platform's echo would be a second copy.
    Ignored,
}

/// How a platform measures message length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    Chars,
    Utf16,
    Bytes,
}

impl Units {
    pub fn len(self, s: &str) -> usize {
        match self {
            Units::Chars => s.chars().count(),
            Units::Utf16 => s.encode_utf16().count(),
            Units::Bytes => s.len(),
        }
    }
}

#[async_trait]
pub trait ChannelHarness: Send + Sync {
    /// The daemon under test.
    fn api(&self) -> &Api;
    /// The registered group chat the checks use (needs the trigger).
    fn chat_jid(&self) -> String;
    /// The assistant trigger, e.g. `@Andy`.
    fn trigger(&self) -> String;
    /// The platform id and display name messages from [`ChannelHarness::user_says`] have.
    fn user(&self) -> (String, String);
    /// Whether the chat is a group chat on the platform.
    fn is_group(&self) -> bool;
    /// Makes the platform deliver a user's message to the chat.
    async fn user_says(&self, text: &str) -> Result<()>;
    /// Makes the platform deliver a message the bot itself wrote, and says what the
    /// adapter is meant to do with it.
    async fn bot_says(&self, text: &str) -> Result<BotEcho>;
    /// Makes the platform deliver the last message again; `false` if it never redelivers.
    async fn redeliver_last(&self) -> Result<bool>;
    /// What the platform received from the bot in the chat, in order.
    async fn delivered(&self) -> Vec<String>;
    /// How many typing indicators the chat saw; `None` if the platform has none.
    async fn typing_shown(&self) -> Option<usize>;
    /// Makes typing indicators fail (`false`: not applicable).
    async fn fail_typing(&self, fail: bool) -> bool;
    /// The platform's message size limit.
    fn max_message(&self) -> Option<(usize, Units)>;
    /// Drops the connection to the platform; `false` if there is none.
    async fn drop_connection(&self) -> bool;
    /// Makes the platform deliver a payload the adapter cannot understand; `false` if
    /// not applicable.
    async fn send_malformed(&self) -> Result<bool>;
    /// The agent's answer to the next run.
    fn next_reply(&self, text: &str);
    /// Whether the chat's stored metadata says it is a group (`None`: not visible).
    async fn stored_is_group(&self) -> Option<bool>;
}

fn nonce() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The chat's stored messages as `(content, sender, sender_name, is_bot_message, timestamp)`.
async fn stored(h: &dyn ChannelHarness) -> Vec<(String, String, String, bool, String)> {
    h.api()
        .messages(&h.chat_jid())
        .await
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap_or("").to_string(),
                m["sender"].as_str().unwrap_or("").to_string(),
                m["sender_name"].as_str().unwrap_or("").to_string(),
                m["is_bot_message"].as_bool().unwrap_or(false),
                m["timestamp"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn wait_stored(h: &dyn ChannelHarness, text: &str) -> (String, String, String, bool, String) {
    wait_for(&format!("`{text}` stored"), DEADLINE, || async {
        stored(h).await.into_iter().find(|m| m.0.contains(text))
    })
    .await
}

async fn wait_delivered(h: &dyn ChannelHarness, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} messages delivered on the platform"),
        DEADLINE,
        || async {
            let d = h.delivered().await;
            (d.len() >= n).then_some(d)
        },
    )
    .await
}

async fn assert_idle(h: &dyn ChannelHarness, why: &str) {
    let (_, status) = h.api().get("/api/status").await.expect("status");
    assert_eq!(
        status["queue"]["active"],
        serde_json::json!([]),
        "{why}: {status}"
    );
    assert_eq!(
        status["queue"]["waiting"],
        serde_json::json!([]),
        "{why}: {status}"
    );
}

/// Runs every check, in an order where each leaves the daemon idle.
pub async fn run_all(h: &dyn ChannelHarness) {
    inbound_text_is_stored_with_its_sender(h).await;
    untriggered_chatter_is_stored_without_a_run(h).await;
    bot_messages_are_marked_and_never_trigger(h).await;
    triggered_messages_get_a_reply_with_typing(h).await;
    long_replies_are_split_at_the_limit(h).await;
    typing_failures_never_block_replies(h).await;
    redelivered_messages_are_stored_once(h).await;
    malformed_payloads_are_skipped(h).await;
    reconnects_without_losing_or_duplicating(h).await;
}

fn skip(check: &str, why: &str) {
    println!("conformance: {check}: not applicable ({why})");
}

pub async fn inbound_text_is_stored_with_its_sender(h: &dyn ChannelHarness) {
    let text = format!("plain hello {}", nonce());
    h.user_says(&text)
        .await
        .expect("platform accepts the message");
    let (_, sender, name, is_bot, timestamp) = wait_stored(h, &text).await;
    let (want_sender, want_name) = h.user();
    assert_eq!(
        (sender, name),
        (want_sender, want_name),
        "sender and name stored"
    );
    assert!(!is_bot);
    assert!(
        timestamp.len() == "2026-01-31T13:32:05.123Z".len() && timestamp.ends_with('Z'),
        "timestamp in the store's format: {timestamp}"
    );
    if let Some(is_group) = h.stored_is_group().await {
        assert_eq!(is_group, h.is_group(), "group/DM flag stored");
    }
}

pub async fn untriggered_chatter_is_stored_without_a_run(h: &dyn ChannelHarness) {
    let before = h.delivered().await.len();
    let text = format!("just chatting {}", nonce());
    h.user_says(&text)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &text).await;
    assert_idle(h, "no trigger, no run").await;
    assert_eq!(h.delivered().await.len(), before, "nothing sent");
}

pub async fn bot_messages_are_marked_and_never_trigger(h: &dyn ChannelHarness) {
    let text = format!("{} this is the bot talking {}", h.trigger(), nonce());
    match h
        .bot_says(&text)
        .await
        .expect("platform accepts the message")
    {
        BotEcho::NeverShown => skip(
            "bot messages",
            "the platform never shows the bot its own messages",
        ),
        BotEcho::StoredAsBot => {
            let (_, _, _, is_bot, _) = wait_stored(h, &text).await;
            assert!(is_bot, "the bot's own message is marked is_bot_message");
        }
        BotEcho::Ignored => {
            // A message after it: once that is stored, the echo was processed.
            let marker = format!("after the echo {}", nonce());
            h.user_says(&marker)
                .await
                .expect("platform accepts the message");
            wait_stored(h, &marker).await;
            let copies = stored(h)
                .await
                .iter()
                .filter(|m| m.0.contains(&text))
                .count();
            assert_eq!(copies, 0, "the bot's echo is not stored again");
        }
    }
    assert_idle(h, "the bot's own message never triggers").await;
}

pub async fn triggered_messages_get_a_reply_with_typing(h: &dyn ChannelHarness) {
    let before = h.delivered().await.len();
    let typing_before = h.typing_shown().await;
    let reply = format!("Here to help {}", nonce());
    h.next_reply(&reply);
    h.user_says(&format!("{} can you help?", h.trigger()))
        .await
        .expect("platform accepts the message");
    let delivered = wait_delivered(h, before + 1).await;
    assert_eq!(delivered[before], reply);
    match (typing_before, h.typing_shown().await) {
        (Some(a), Some(b)) => assert!(b > a, "a typing indicator was shown during the run"),
        _ => skip("typing", "the platform has no typing indicator"),
    }
}

pub async fn long_replies_are_split_at_the_limit(h: &dyn ChannelHarness) {
    let Some((max, units)) = h.max_message() else {
        return skip("splitting", "the platform has no message size limit");
    };
    // Words, multi-byte letters and emoji (two UTF-16 units each), about 2.5 × the limit.
    let words = ["naïve", "café", "😀😀", "splitting", "words", "日本語"];
    let mut reply = String::new();
    let mut i = 0;
    while units.len(&reply) < max * 5 / 2 {
        reply.push_str(words[i % words.len()]);
        reply.push(' ');
        i += 1;
    }
    let reply = reply.trim().to_string();
    let before = h.delivered().await.len();
    h.next_reply(&reply);
    h.user_says(&format!("{} tell me everything", h.trigger()))
        .await
        .expect("platform accepts the message");
    let delivered = wait_delivered(h, before + 3).await;
    let pieces = &delivered[before..];
    assert_eq!(pieces.len(), 3, "split into the fewest pieces");
    for p in pieces {
        assert!(units.len(p) <= max, "piece within the limit");
        assert!(!p.contains('\u{FFFD}'), "no broken characters");
    }
    let words_back: Vec<&str> = pieces.iter().flat_map(|p| p.split(' ')).collect();
    let words_sent: Vec<&str> = reply.split(' ').collect();
    assert_eq!(words_back, words_sent, "no word broken or lost");
}

pub async fn typing_failures_never_block_replies(h: &dyn ChannelHarness) {
    if !h.fail_typing(true).await {
        return skip("typing failures", "the platform has no typing indicator");
    }
    let before = h.delivered().await.len();
    let reply = format!("Replying anyway {}", nonce());
    h.next_reply(&reply);
    h.user_says(&format!("{} still there?", h.trigger()))
        .await
        .expect("platform accepts the message");
    let delivered = wait_delivered(h, before + 1).await;
    assert_eq!(delivered[before], reply);
    h.fail_typing(false).await;
}

pub async fn redelivered_messages_are_stored_once(h: &dyn ChannelHarness) {
    let text = format!("only once {}", nonce());
    h.user_says(&text)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &text).await;
    if !h.redeliver_last().await.expect("redelivery") {
        return skip("redelivery", "the platform never redelivers");
    }
    // A marker after the redelivery: once it is stored, the redelivery was processed.
    let marker = format!("after redelivery {}", nonce());
    h.user_says(&marker)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &marker).await;
    let copies = stored(h).await.iter().filter(|m| m.0 == text).count();
    assert_eq!(copies, 1, "the platform's message id deduplicates");
}

pub async fn malformed_payloads_are_skipped(h: &dyn ChannelHarness) {
    if !h
        .send_malformed()
        .await
        .expect("platform accepts the payload")
    {
        return skip("malformed payloads", "not applicable");
    }
    let text = format!("after the garbage {}", nonce());
    h.user_says(&text)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &text).await;
}

pub async fn reconnects_without_losing_or_duplicating(h: &dyn ChannelHarness) {
    if !h.drop_connection().await {
        return skip("reconnect", "the channel has no connection of its own");
    }
    let before = h.delivered().await.len();
    let reply = format!("Back online {}", nonce());
    h.next_reply(&reply);
    let text = format!("{} are you back? {}", h.trigger(), nonce());
    h.user_says(&text)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &text).await;
    let delivered = wait_delivered(h, before + 1).await;
    assert_eq!(&delivered[before..], std::slice::from_ref(&reply));
    // Give a duplicate every chance to show up: one more round trip through the channel.
    let marker = format!("marker {}", nonce());
    h.user_says(&marker)
        .await
        .expect("platform accepts the message");
    wait_stored(h, &marker).await;
    let copies = stored(h).await.iter().filter(|m| m.0 == text).count();
    assert_eq!(copies, 1, "stored once across the reconnect");
    assert_eq!(h.delivered().await.len(), before + 1, "replied once");
}
