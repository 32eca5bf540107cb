//! Slack events as the store keeps them, and Slack's text format decoded into plain text
//! (SPEC §13.3): `&amp;` `&lt;` `&gt;`, `<@U…>` (as `@name`), `<#C…|name>`, `<url|label>`,
//! `<!here>`. Pure: the socket layer looks the names up first.

use std::collections::HashMap;

use serde_json::Value;

/// Message subtypes that are a person writing; the rest (edits, deletions, joins,
/// topic changes, bot messages, …) are not user input.
const USER_SUBTYPES: [&str; 3] = ["file_share", "thread_broadcast", "me_message"];

/// A `message` or `app_mention` event someone wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub channel: String,
    /// The message's id within its channel.
    pub ts: String,
    pub user: String,
    /// Slack-formatted.
    pub text: String,
    /// `im`, `channel`, `group`, `mpim` (`message` events only).
    pub channel_type: Option<String>,
    pub files: Vec<SharedFile>,
}

/// A file a person shared with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharedFile {
    pub name: String,
    /// As Slack announces it.
    pub size: Option<u64>,
    /// `url_private_download` (or `url_private`): fetched with the bot token.
    pub url: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    Message(Event),
    /// Not something a person wrote (an edit, a join, a bot); why, for the debug log.
    NotInput(&'static str),
    /// Missing what every message has.
    Malformed(&'static str),
}

/// Reads an Events API `event`; `bot_user` is our bot's user id.
pub(crate) fn read(event: &Value, bot_user: &str) -> Read {
    match event["type"].as_str() {
        Some("message" | "app_mention") => {}
        Some(_) => return Read::NotInput("not a message event"),
        None => return Read::Malformed("an event without a type"),
    }
    if let Some(subtype) = event["subtype"].as_str()
        && !USER_SUBTYPES.contains(&subtype)
    {
        return Read::NotInput("an edit, deletion, join or other notice");
    }
    if event.get("bot_id").is_some_and(|b| !b.is_null()) || event["hidden"].as_bool() == Some(true)
    {
        return Read::NotInput("a bot's message");
    }
    let (Some(channel), Some(ts), Some(user)) = (
        event["channel"].as_str(),
        event["ts"].as_str(),
        event["user"].as_str(),
    ) else {
        return Read::Malformed("a message without a channel, ts or user");
    };
    if user == bot_user {
        return Read::NotInput("our own message");
    }
    // Ids become JIDs and API parameters: Slack's are upper-case letters and digits.
    let id_like = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    if !id_like(channel) || !id_like(user) {
        return Read::Malformed("a message whose channel or user is not a Slack id");
    }
    if timestamp(ts).is_none() {
        return Read::Malformed("a message whose ts is not a Slack timestamp");
    }
    Read::Message(Event {
        channel: channel.to_string(),
        ts: ts.to_string(),
        user: user.to_string(),
        text: event["text"].as_str().unwrap_or("").to_string(),
        channel_type: event["channel_type"].as_str().map(str::to_string),
        files: event["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| SharedFile {
                name: f["name"]
                    .as_str()
                    .or_else(|| f["title"].as_str())
                    .unwrap_or("file")
                    .to_string(),
                size: f["size"].as_u64(),
                // An external file (a link to another service) is named, not fetched.
                url: (f["is_external"].as_bool() != Some(true))
                    .then(|| {
                        f["url_private_download"]
                            .as_str()
                            .or_else(|| f["url_private"].as_str())
                    })
                    .flatten()
                    .map(str::to_string),
            })
            .collect(),
    })
}

/// A Slack `ts` (`1769866320.123456`) in the store's timestamp format.
pub(crate) fn timestamp(ts: &str) -> Option<String> {
    let (seconds, fraction) = ts.split_once('.').unwrap_or((ts, ""));
    let seconds: i64 = seconds.parse().ok()?;
    let millis: i64 = format!("{:0<3}", fraction.get(..3).unwrap_or(fraction))
        .parse()
        .ok()?;
    nanoclaw_channel::time::from_unix_millis(seconds.checked_mul(1000)?.checked_add(millis)?)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// User ids mentioned (`<@U…>`) in Slack-formatted text.
pub(crate) fn mentioned_users(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let tail = &rest[start + 2..];
        let Some(end) = tail.find('>') else { break };
        let id = tail[..end].split('|').next().unwrap_or("");
        if !id.is_empty() && !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
        rest = &tail[end..];
    }
    ids
}

/// Slack-formatted text as plain text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub text: String,
    /// The bot was mentioned (the mention itself is removed).
    pub addresses_bot: bool,
}

/// Decodes Slack's format; `names` maps user ids to display names.
pub(crate) fn decode(text: &str, names: &HashMap<String, String>, bot_user: &str) -> Decoded {
    let mut out = String::with_capacity(text.len());
    let mut addresses_bot = false;
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&unescape(&rest[..start]));
        let tail = &rest[start + 1..];
        let Some(end) = tail.find('>') else {
            out.push_str(&unescape(&rest[start..]));
            rest = "";
            break;
        };
        let inner = &tail[..end];
        let (target, label) = match inner.split_once('|') {
            Some((t, l)) => (t, Some(unescape(l))),
            None => (inner, None),
        };
        if let Some(id) = target.strip_prefix('@') {
            if id == bot_user {
                addresses_bot = true;
                // The mention and one space after it: "<@bot> hi" is "hi".
                if tail[end + 1..].starts_with(' ') {
                    rest = &tail[end + 2..];
                    continue;
                }
            } else {
                let name = label
                    .map(|l| l.trim_start_matches('@').to_string())
                    .or_else(|| names.get(id).cloned())
                    .unwrap_or_else(|| id.to_string());
                out.push('@');
                out.push_str(&name);
            }
        } else if let Some(id) = target.strip_prefix('#') {
            out.push('#');
            out.push_str(&label.unwrap_or_else(|| id.to_string()));
        } else if let Some(special) = target.strip_prefix('!') {
            let word = special.split('^').next().unwrap_or("");
            match (word, label) {
                ("here" | "channel" | "everyone", _) => {
                    out.push('@');
                    out.push_str(word);
                }
                (_, Some(label)) => out.push_str(&label),
                (_, None) => out.push_str(special),
            }
        } else {
            let url = unescape(target);
            let shown = url.strip_prefix("mailto:").unwrap_or(&url).to_string();
            match label {
                Some(label)
                    if label != url
                        && label != shown
                        && Some(label.as_str()) != url.split_once("://").map(|(_, r)| r) =>
                {
                    out.push_str(&format!("{label} ({shown})"));
                }
                _ => out.push_str(&shown),
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(&unescape(rest));
    // Line breaks and indentation are the writer's (code, lists): only the ends trimmed.
    Decoded {
        text: out.trim().to_string(),
        addresses_bot,
    }
}

/// Text for Slack's `text` field: `&`, `<` and `>` escaped, so what the agent wrote is
/// shown as written and never becomes a mention or a link by accident.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> HashMap<String, String> {
        HashMap::from([("U2".to_string(), "carol".to_string())])
    }

    #[test]
    fn slack_text_becomes_plain_text() {
        let d = decode(
            "<@UBOT> ask <@U2> about <#C9|general> &amp; <https://x.org/a?b=1&amp;c=2|the docs>, \
             <https://x.org|x.org>, <mailto:a@b.org|a@b.org>, <!here> 1 &lt; 2 &gt; 0 <@U7|dave>\n  \
             - and <@UBOT> this",
            &names(),
            "UBOT",
        );
        assert!(d.addresses_bot);
        assert_eq!(
            d.text,
            "ask @carol about #general & the docs (https://x.org/a?b=1&c=2), https://x.org, \
             a@b.org, @here 1 < 2 > 0 @dave\n  - and this"
        );
        let plain = decode("no mention here, <@U404>", &names(), "UBOT");
        assert!(!plain.addresses_bot);
        assert_eq!(plain.text, "no mention here, @U404");
        assert_eq!(decode("broken <tag", &names(), "UBOT").text, "broken <tag");
        assert_eq!(mentioned_users("<@UBOT> <@U2> <@U2|x> <@"), ["UBOT", "U2"]);
    }

    #[test]
    fn escaping_round_trips() {
        let text = "if a < b && b > c then <@U1> <!channel>";
        assert_eq!(
            escape(text),
            "if a &lt; b &amp;&amp; b &gt; c then &lt;@U1&gt; &lt;!channel&gt;"
        );
        assert_eq!(decode(&escape(text), &names(), "UBOT").text, text);
    }

    #[test]
    fn only_people_writing_is_input() {
        let message = |extra: Value| {
            let mut m = json!({"type": "message", "channel": "C1", "user": "U1", "text": "hi",
                               "ts": "1769866320.123456", "channel_type": "channel"});
            for (k, v) in extra.as_object().into_iter().flatten() {
                m[k] = v.clone();
            }
            m
        };
        assert!(
            matches!(read(&message(json!({})), "UBOT"), Read::Message(e) if e.ts == "1769866320.123456")
        );
        for not_input in [
            json!({"subtype": "message_changed"}),
            json!({"subtype": "channel_join"}),
            json!({"subtype": "bot_message", "bot_id": "B1"}),
            json!({"bot_id": "B1"}),
            json!({"user": "UBOT"}),
            json!({"type": "reaction_added"}),
        ] {
            assert!(
                matches!(read(&message(not_input.clone()), "UBOT"), Read::NotInput(_)),
                "{not_input}"
            );
        }
        let Read::Message(file) = read(
            &message(json!({"subtype": "file_share", "files": [{"name": "cat.png"}]})),
            "UBOT",
        ) else {
            panic!("a file share is input");
        };
        assert_eq!(
            file.files,
            [SharedFile {
                name: "cat.png".into(),
                size: None,
                url: None
            }]
        );
        assert!(matches!(
            read(&json!({"type": "message", "text": "x"}), "UBOT"),
            Read::Malformed(_)
        ));
        assert!(matches!(
            read(&message(json!({"ts": "oops"})), "UBOT"),
            Read::Malformed(_)
        ));
        assert!(matches!(
            read(&message(json!({"channel": "C1:../x"})), "UBOT"),
            Read::Malformed(_)
        ));
        assert_eq!(timestamp("9223372036854775.999"), None, "no overflow");
        assert_eq!(
            timestamp("1769866320.123456").as_deref(),
            Some("2026-01-31T13:32:00.123Z")
        );
        assert_eq!(timestamp("soon"), None);
    }
}
