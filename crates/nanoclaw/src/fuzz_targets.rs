//! Fuzz targets of the host's parsers (`nanoclaw-fuzz`; corpora in `fuzz/corpus/`):
//! `.env` with setup's writer, `container_config`, both allowlists, the prompt
//! formatter and `<internal>` stripping. The IPC target lives with the IPC tests
//! (`ipc/tests.rs`), where a real store and layout are at hand.

use std::collections::BTreeMap;

use nanoclaw_fuzz::{Shape, fuzz};
use serde_json::Value;

use crate::config::dotenv;

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

/// Any `.env` parses or names a line; every line `parse` reads as `K=…`, `key_of` finds
/// as `K` (setup relies on it to replace lines); and setup's writer changes exactly the
/// setting it is given, whatever else the file holds and whatever the value.
#[test]
fn fuzz_dotenv_and_the_setup_writer() {
    fuzz(
        "dotenv",
        Shape::Bytes,
        &[
            "=",
            "export ",
            "\"",
            "'",
            "#",
            " # ",
            "\\",
            "\\n",
            "\n",
            "\r\n",
            "\u{feff}",
            "ANTHROPIC_API_KEY",
            "KEY",
            "_",
        ],
        |input| {
            let text = text(input);
            let Ok(entries) = dotenv::parse(&text) else {
                return;
            };
            for line in text.lines() {
                if let Ok(one) = dotenv::parse(line)
                    && let Some(key) = one.keys().next()
                {
                    assert_eq!(dotenv::key_of(line), Some(key.as_str()), "{line:?}");
                }
            }
            // A new value for an existing key (or a new key), taken from the input.
            let key = entries
                .keys()
                .nth(input.len() % (entries.len() + 1))
                .cloned()
                .unwrap_or_else(|| "NEW_KEY".into());
            let value: String = text.chars().rev().take(40).collect();
            let changes: BTreeMap<&str, Option<String>> =
                [(key.as_str(), Some(value.clone()))].into();
            let written = crate::cli::setup::updated_dotenv(&text, &changes);
            let after = dotenv::parse(&written).expect("setup's .env parses");
            assert_eq!(after[&key].0, value, "{written:?}");
            for (k, (v, _)) in &entries {
                if *k != key {
                    assert_eq!(&after[k].0, v, "{k} changed: {written:?}");
                }
            }
            let removed: BTreeMap<&str, Option<String>> = [(key.as_str(), None)].into();
            let without =
                dotenv::parse(&crate::cli::setup::updated_dotenv(&text, &removed)).expect("parses");
            assert!(!without.contains_key(&key));
        },
    );
}

#[test]
fn fuzz_container_config() {
    fuzz(
        "container_config",
        Shape::Json,
        &[
            "additionalMounts",
            "hostPath",
            "containerPath",
            "readonly",
            "timeout",
            "network",
            "internet",
            "none",
            "full",
            "limits",
            "memoryMb",
            "pids",
            "diskMb",
            "budget",
            "dailyTokens",
            "runTokens",
            "../",
            "/",
            "~",
        ],
        |input| {
            let text = text(input);
            match crate::mounts::ContainerConfig::parse(Some(&text)) {
                Ok(_) => {}
                Err(why) => assert!(!why.is_empty()),
            }
        },
    );
}

#[test]
fn fuzz_sender_allowlist() {
    use crate::router::sender_allowlist::{AllowlistState, parse};
    fuzz(
        "sender_allowlist",
        Shape::Json,
        &[
            "default",
            "chats",
            "allow",
            "mode",
            "trigger",
            "drop",
            "*",
            "logDenied",
            "tg:1",
            "web:main",
            "123",
        ],
        |input| {
            let Ok(value) = serde_json::from_slice::<Value>(input) else {
                return;
            };
            if let Ok(list) = parse(&value) {
                let state = AllowlistState::Valid(list);
                for (jid, sender) in [("tg:1", "123"), ("web:main", "me"), ("", "")] {
                    let _ = state.should_drop(jid, sender);
                    let _ = state.may_trigger(jid, sender);
                }
            }
        },
    );
}

#[test]
fn fuzz_mount_allowlist() {
    let home = std::path::Path::new("/nonexistent-home");
    fuzz(
        "mount_allowlist",
        Shape::Json,
        &[
            "allowedRoots",
            "path",
            "allowReadWrite",
            "description",
            "blockedPatterns",
            "nonMainReadOnly",
            "~/",
            "/tmp",
            "/",
            "..",
            ".ssh",
        ],
        |input| {
            let Ok(value) = serde_json::from_slice::<Value>(input) else {
                return;
            };
            let _ = crate::mounts::allowlist::parse(&value, home);
        },
    );
}

/// Whatever people write (names, text, timestamps), the prompt has exactly one
/// `<message` element per message: nothing a sender writes becomes markup. And
/// `<internal>` stripping never shows what an `<internal>` block hid.
#[test]
fn fuzz_prompt_and_internal_stripping() {
    use crate::router::prompt::{escape_xml, format_prompt, strip_internal};
    use crate::store::{Message, StoredMessage};
    let tz = jiff::tz::TimeZone::UTC;
    fuzz(
        "prompt",
        Shape::Bytes,
        &[
            "<internal>",
            "</internal>",
            "<message",
            "</messages>",
            "&",
            "&amp;",
            "\"",
            "<",
            ">",
            "2026-12-01T10:00:00.000Z",
            "\u{0}",
        ],
        |input| {
            let text = text(input);
            let fields: Vec<&str> = text.split('\u{0}').collect();
            let messages: Vec<StoredMessage> = fields
                .chunks(3)
                .enumerate()
                .map(|(i, f)| StoredMessage {
                    seq: i as i64,
                    message: Message {
                        id: i.to_string(),
                        chat_jid: "web:main".into(),
                        sender: "s".into(),
                        sender_name: f.first().copied().unwrap_or("").into(),
                        content: f.get(1).copied().unwrap_or("").into(),
                        timestamp: f.get(2).copied().unwrap_or("").into(),
                        is_from_me: false,
                        is_bot_message: false,
                        flagged: None,
                    },
                })
                .collect();
            let prompt = format_prompt(&messages, &tz, "UTC");
            assert_eq!(
                prompt.matches("<message ").count(),
                messages.len(),
                "{prompt}"
            );
            let escaped = escape_xml(&text);
            assert!(!escaped.contains(['<', '>', '"']), "{escaped}");

            let shown = strip_internal(&text);
            assert!(shown.len() <= text.len());
            if !text.contains("<internal>") {
                assert_eq!(shown, text.trim());
            }
            // A secret inside a closed block never shows, wherever the block is.
            let hidden = format!("{text}<internal>SECRET-0xfeed</internal>{text}");
            if !text.contains("<internal>") && !text.contains("</internal>") {
                assert!(!strip_internal(&hidden).contains("SECRET-0xfeed"));
            }
        },
    );
}
