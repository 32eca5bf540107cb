//! A gateway `MESSAGE_CREATE` as the store keeps it. Pure: the gateway supplies who the
//! bot is, the chat's name and the group's trigger.

use nanoclaw_channel::{ChatMeta, Message};
use serde_json::Value;

use crate::{BotUser, PREFIX};

/// Message types that are people writing (DEFAULT, REPLY); joins, pins, boosts and
/// thread notices are not user input.
const USER_TYPES: [u64; 2] = [0, 19];

/// The chat and message of a `MESSAGE_CREATE` payload, and whether it addresses the bot
/// (a mention, or a reply to one of its messages).
pub(crate) struct Inbound {
    pub chat: ChatMeta,
    pub message: Message,
    pub addresses_bot: bool,
}

fn display_name(user: &Value, member: Option<&Value>) -> String {
    member
        .and_then(|m| m["nick"].as_str())
        .or_else(|| user["global_name"].as_str())
        .or_else(|| user["username"].as_str())
        .unwrap_or("someone")
        .to_string()
}

/// Reads a `MESSAGE_CREATE`; `None` when it is not something a person wrote.
pub(crate) fn read(d: &Value, me: Option<&BotUser>, chat_name: Option<String>) -> Option<Inbound> {
    if !USER_TYPES.contains(&d["type"].as_u64().unwrap_or(0)) {
        return None;
    }
    let id = d["id"].as_str()?;
    let channel = d["channel_id"].as_str()?;
    let author = &d["author"];
    let author_id = author["id"].as_str()?;
    // Bots (ours included: the host stored our replies when it committed them) and
    // webhooks are not people writing; storing them would also let two assistants
    // answer each other.
    if me.is_some_and(|m| m.id == author_id)
        || author["bot"].as_bool() == Some(true)
        || d["webhook_id"].is_string()
    {
        return None;
    }
    let member = d.get("member").filter(|m| m.is_object());
    let sender_name = display_name(author, member);
    let mut content = d["content"].as_str().unwrap_or("").to_string();
    let mut addresses_bot = false;
    if let Some(mentions) = d["mentions"].as_array() {
        for user in mentions {
            let Some(uid) = user["id"].as_str() else {
                continue;
            };
            let is_me = me.is_some_and(|m| m.id == uid);
            let tokens = [format!("<@{uid}>"), format!("<@!{uid}>")];
            if tokens.iter().any(|t| content.contains(t.as_str())) && is_me {
                addresses_bot = true;
            }
            let replacement = if is_me {
                String::new()
            } else {
                format!("@{}", display_name(user, user.get("member")))
            };
            for t in &tokens {
                if is_me {
                    // The mention and one space after it: "<@bot> hi" is "hi".
                    content = content.replace(&format!("{t} "), "");
                }
                content = content.replace(t.as_str(), &replacement);
            }
        }
    }
    if let Some(me) = me
        && d["referenced_message"]["author"]["id"].as_str() == Some(me.id.as_str())
    {
        addresses_bot = true;
    }
    // Line breaks and indentation are the writer's (code, lists): only the ends trimmed.
    let mut content = content.trim().to_string();
    if let Some(files) = d["attachments"].as_array() {
        let names: Vec<String> = files
            .iter()
            .map(|f| format!("[Attachment: {}]", f["filename"].as_str().unwrap_or("file")))
            .collect();
        if !names.is_empty() {
            content = [content, names.join(" ")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    let is_group = d["guild_id"].is_string();
    let timestamp = d["timestamp"]
        .as_str()
        .and_then(nanoclaw_channel::time::from_rfc3339)
        .unwrap_or_else(nanoclaw_channel::time::now);
    let jid = format!("{PREFIX}{channel}");
    let name = if is_group {
        chat_name
    } else {
        chat_name.or_else(|| Some(format!("DM with {sender_name}")))
    };
    Some(Inbound {
        chat: ChatMeta {
            jid: jid.clone(),
            name,
            timestamp: timestamp.clone(),
            channel: Some("discord".into()),
            is_group: Some(is_group),
        },
        message: Message {
            id: id.to_string(),
            chat_jid: jid,
            sender: author_id.to_string(),
            sender_name,
            content,
            timestamp,
            is_from_me: false,
            is_bot_message: false,
            flagged: None,
        },
        addresses_bot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn me() -> BotUser {
        BotUser {
            id: "900".into(),
            name: "andy-bot".into(),
        }
    }

    fn message(content: &str) -> Value {
        json!({
            "id": "1", "channel_id": "42", "guild_id": "7", "type": 0,
            "author": {"id": "5", "username": "bob", "global_name": "Bob"},
            "member": {"nick": "Bobby"},
            "content": content, "timestamp": "2026-01-31T13:32:00.123000+00:00",
            "mentions": [{"id": "900", "username": "andy-bot"}, {"id": "6", "username": "carol"}],
        })
    }

    #[test]
    fn mentions_of_the_bot_address_it_and_others_become_names() {
        let d = message("<@900> ask <@!6> about <#77>\n  - and <@900> this");
        let got = read(&d, Some(&me()), Some("Guild #general".into())).expect("read");
        assert!(got.addresses_bot);
        assert_eq!(got.message.content, "ask @carol about <#77>\n  - and this");
        assert_eq!(got.message.sender, "5");
        assert_eq!(got.message.sender_name, "Bobby");
        assert_eq!(got.message.chat_jid, "dc:42");
        assert_eq!(got.message.timestamp, "2026-01-31T13:32:00.123Z");
        assert_eq!(got.chat.name.as_deref(), Some("Guild #general"));
        assert_eq!(got.chat.is_group, Some(true));
    }

    #[test]
    fn replies_to_the_bot_address_it_and_bots_are_not_input() {
        let mut d = message("thanks!");
        d["mentions"] = json!([]);
        d["type"] = json!(19);
        d["referenced_message"] = json!({"author": {"id": "900"}});
        assert!(read(&d, Some(&me()), None).expect("read").addresses_bot);
        let mut own = message("<@900> I said so");
        own["author"] = json!({"id": "900", "username": "andy-bot"});
        assert!(read(&own, Some(&me()), None).is_none(), "our own echo");
        let mut other_bot = message("<@900> ping");
        other_bot["author"] = json!({"id": "8", "username": "otherbot", "bot": true});
        assert!(read(&other_bot, Some(&me()), None).is_none(), "another bot");
        let mut hook = message("<@900> build failed");
        hook["webhook_id"] = json!("77");
        assert!(read(&hook, Some(&me()), None).is_none(), "a webhook");
    }

    #[test]
    fn only_people_writing_is_input_and_dms_are_named_after_them() {
        let mut join = message("");
        join["type"] = json!(7);
        assert!(read(&join, Some(&me()), None).is_none());
        let mut dm = message("hi");
        dm.as_object_mut().expect("object").remove("guild_id");
        dm.as_object_mut().expect("object").remove("member");
        let got = read(&dm, Some(&me()), None).expect("read");
        assert_eq!(got.chat.is_group, Some(false));
        assert_eq!(got.chat.name.as_deref(), Some("DM with Bob"));
        let mut photo = message("");
        photo["attachments"] = json!([{"filename": "cat.png"}]);
        assert_eq!(
            read(&photo, Some(&me()), None)
                .expect("read")
                .message
                .content,
            "[Attachment: cat.png]"
        );
        assert!(
            read(&json!({"type": 0}), Some(&me()), None).is_none(),
            "malformed"
        );
    }
}
