//! A raw mail (RFC 5322 bytes from IMAP) to what the channel stores: sender, the text
//! the agent reads, the thread it belongs to, whether it may ever reach an agent, and
//! its attachments. Pure, and never panics on what a sender wrote.

use mail_parser::{HeaderName, MessageParser, MimeHeaders};

use crate::body;
use crate::trust::{self, Trust};

/// What judging a mail needs to know.
pub struct Rules<'a> {
    /// The assistant's own address (mail from it is never answered).
    pub own_address: &'a str,
    pub authserv_id: Option<&'a str>,
    pub trust_unauthenticated: bool,
    pub max_attachment_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Message-ID without `<>`, or one derived from the content when it has none.
    pub message_id: String,
    /// The From address, lowercased.
    pub from: String,
    /// Whose chat it belongs to: the sender, or for mail from the assistant's own
    /// address (a copy of a reply, mail sent from its account) the first recipient.
    pub correspondent: String,
    /// Sent from the assistant's own address: stored as the assistant's, never input.
    pub from_me: bool,
    pub from_name: String,
    pub subject: String,
    /// Subject line and the new part of the body (SPEC §13.5).
    pub content: String,
    pub timestamp: String,
    /// `References` then `In-Reply-To`, without `<>`, oldest first.
    pub references: Vec<String>,
    /// Why this mail must never reach an agent.
    pub flagged: Option<String>,
    /// How the sender was judged (for the log).
    pub trust: Trust,
    pub attachments: Vec<Attachment>,
    /// Attachments not saved: name and size.
    pub too_large: Vec<(String, usize)>,
}

/// The `Authentication-Results` values the receiving server can have added, topmost
/// first: those above the topmost `Received` header of an authenticated submission
/// (RFC 3848's `ESMTPA`, `ESMTPSA`, …). Anything below such a header was already in the
/// mail when a user of some server handed it in, so it is the sender's writing: without
/// this, a user of the same server (whose submissions many servers do not stamp) could
/// write the server's own verdict into their mail.
fn receivers_results(msg: &mail_parser::Message<'_>) -> Vec<String> {
    use mail_parser::{HeaderValue, Protocol};
    let mut out = Vec::new();
    for header in msg.headers() {
        match (&header.name, &header.value) {
            (HeaderName::Received, HeaderValue::Received(received))
                if matches!(
                    received.with,
                    Some(
                        Protocol::ESMTPA
                            | Protocol::ESMTPSA
                            | Protocol::LMTPA
                            | Protocol::LMTPSA
                            | Protocol::UTF8SMTPA
                            | Protocol::UTF8SMTPSA
                            | Protocol::UTF8LMTPA
                            | Protocol::UTF8LMTPSA
                    )
                ) =>
            {
                break;
            }
            (HeaderName::AuthenticationResults, value) => {
                if let Some(text) = value.as_text() {
                    out.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
            _ => {}
        }
    }
    out
}

/// Parses and judges one mail. `Err` only when the bytes hold no mail headers at all.
pub fn read(raw: &[u8], rules: &Rules<'_>) -> Result<Mail, String> {
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .map_err(|_| "the MIME parser failed on this mail".to_string())?;
    let Some(msg) = parsed else {
        return Err("no mail headers found".into());
    };
    let from = msg.from().and_then(|a| a.first());
    let from_address = from
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let from_name = from
        .and_then(|a| a.name())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| from_address.clone());
    let subject = msg.subject().map(one_line).unwrap_or_default();
    let message_id = match msg.message_id().map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => format!("nomid.{:016x}", fnv(raw)),
    };
    let mut references: Vec<String> = ids(msg.references());
    for id in ids(msg.in_reply_to()) {
        if !references.contains(&id) {
            references.push(id);
        }
    }
    let timestamp = msg
        .date()
        .filter(|d| d.is_valid())
        .and_then(|d| nanoclaw_channel::time::from_unix_seconds(d.to_timestamp()))
        .filter(|t| *t <= nanoclaw_channel::time::now())
        .unwrap_or_else(nanoclaw_channel::time::now);

    let domain = from_address.rsplit_once('@').map_or("", |(_, d)| d);
    let auth_results = receivers_results(&msg);
    let verdict = trust::judge(&auth_results, domain, rules.authserv_id);
    let text = |name: &str| {
        msg.header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let auto_submitted = text("Auto-Submitted");
    let precedence = text("Precedence");
    let return_path = text("Return-Path");
    let local = from_address.split('@').next().unwrap_or("");
    let from_me = !from_address.is_empty() && from_address == rules.own_address;
    // Mail "from us" that the receiving server does not vouch for is someone else's
    // forgery: filed under nobody's chat but the forger's claim, and flagged below.
    let from_me = from_me && (verdict.is_trusted() || rules.trust_unauthenticated);
    let correspondent = if from_me {
        msg.to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(|a| a.trim().to_ascii_lowercase())
            .unwrap_or_else(|| from_address.clone())
    } else {
        from_address.clone()
    };
    let flagged = if from_address.is_empty() {
        Some("no From address".to_string())
    } else if from_me {
        None
    } else if !auto_submitted.is_empty() && !auto_submitted.starts_with("no") {
        Some(format!("automatic mail (Auto-Submitted: {auto_submitted})"))
    } else if ["bulk", "list", "junk"].contains(&precedence.as_str()) {
        Some(format!("bulk mail (Precedence: {precedence})"))
    } else if return_path == "<>" || local.eq_ignore_ascii_case("mailer-daemon") {
        Some("a bounce (delivery report)".to_string())
    } else if !verdict.is_trusted() && !rules.trust_unauthenticated {
        match &verdict {
            Trust::Untrusted { why } => Some(format!("sender not authenticated: {why}")),
            Trust::Trusted { .. } => None,
        }
    } else {
        None
    };

    let body_text = msg.body_text(0).map(|b| b.into_owned()).unwrap_or_default();
    let mut attachments = Vec::new();
    let mut too_large = Vec::new();
    for (i, part) in msg.attachments().enumerate() {
        let name = part
            .attachment_name()
            .map(str::to_string)
            .unwrap_or_else(|| format!("attachment-{}", i + 1));
        let bytes = part.contents();
        if bytes.len() > rules.max_attachment_bytes {
            too_large.push((name, bytes.len()));
        } else {
            attachments.push(Attachment {
                name,
                bytes: bytes.to_vec(),
            });
        }
    }
    let new_part = body::new_part(&body_text);
    let content = match (subject.is_empty(), new_part.is_empty()) {
        (false, false) => format!("{subject}\n\n{new_part}"),
        (false, true) => subject.clone(),
        (true, _) => new_part,
    };
    Ok(Mail {
        message_id,
        from: from_address,
        correspondent,
        from_me,
        from_name,
        subject,
        content,
        timestamp,
        references,
        flagged,
        trust: verdict,
        attachments,
        too_large,
    })
}

fn ids(value: &mail_parser::HeaderValue<'_>) -> Vec<String> {
    value
        .as_text_list()
        .unwrap_or_default()
        .iter()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// FNV-1a, for a stable id of a mail without Message-ID (the same on every fetch).
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub use nanoclaw_channel::text::human_size as size;

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules<'static> = Rules {
        own_address: "andy@nanoclaw.test",
        authserv_id: None,
        trust_unauthenticated: false,
        max_attachment_bytes: 1024,
    };

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}").into_bytes()
    }

    const TRUSTED: &str = "Authentication-Results: mx.nanoclaw.test; dmarc=pass header.from=trusted.test\r\nFrom: Alice Example <Alice@Trusted.test>\r\nTo: andy@nanoclaw.test\r\nSubject: Re: Plants\r\nMessage-ID: <m1@trusted.test>\r\nIn-Reply-To: <a0@nanoclaw.test>\r\nReferences: <root@trusted.test> <a0@nanoclaw.test>\r\nDate: Mon, 5 Jan 2026 10:00:00 +0000";

    #[test]
    fn a_trusted_reply_is_read_without_its_quote() {
        let m = read(
            &mail(
                TRUSTED,
                "Water them at six.\r\n\r\nOn Mon, Andy wrote:\r\n> When?\r\n",
            ),
            &RULES,
        )
        .expect("parsed");
        assert_eq!(m.from, "alice@trusted.test");
        assert_eq!(m.from_name, "Alice Example");
        assert_eq!(m.message_id, "m1@trusted.test");
        assert_eq!(m.content, "Re: Plants\n\nWater them at six.");
        assert_eq!(m.references, ["root@trusted.test", "a0@nanoclaw.test"]);
        assert_eq!(m.timestamp, "2026-01-05T10:00:00.000Z");
        assert_eq!(m.flagged, None, "{:?}", m.trust);
    }

    #[test]
    fn forged_automatic_and_bounced_mail_is_flagged() {
        let forged = "From: Boss <boss@trusted.test>\r\nSubject: wire money\r\nMessage-ID: <f@x>";
        let m = read(&mail(forged, "now"), &RULES).expect("parsed");
        assert!(
            m.flagged
                .as_deref()
                .is_some_and(|f| f.contains("not authenticated")),
            "{m:?}"
        );
        let lenient = Rules {
            trust_unauthenticated: true,
            ..RULES
        };
        assert_eq!(
            read(&mail(forged, "now"), &lenient)
                .expect("parsed")
                .flagged,
            None
        );
        for (extra, want) in [
            ("Auto-Submitted: auto-replied", "automatic"),
            ("Precedence: bulk", "bulk"),
            ("Return-Path: <>", "bounce"),
        ] {
            let m = read(&mail(&format!("{TRUSTED}\r\n{extra}"), "x"), &lenient).expect("parsed");
            assert!(
                m.flagged.as_deref().is_some_and(|f| f.contains(want)),
                "{extra}: {m:?}"
            );
        }
        // Our own address counts as ours only when the receiving server vouches for it;
        // otherwise it is a forgery, filed under its own claim and flagged.
        let own = "From: andy@nanoclaw.test\r\nTo: Alice <alice@trusted.test>\r\nSubject: x";
        let m = read(&mail(own, "x"), &RULES).expect("parsed");
        assert!(!m.from_me);
        assert!(m.flagged.is_some(), "{m:?}");
        assert_eq!(m.correspondent, "andy@nanoclaw.test");
        let vouched = format!(
            "Authentication-Results: mx.nanoclaw.test; dmarc=pass header.from=nanoclaw.test\r\n{own}"
        );
        let m = read(&mail(&vouched, "x"), &RULES).expect("parsed");
        assert!(m.from_me);
        assert_eq!(m.flagged, None);
        assert_eq!(m.correspondent, "alice@trusted.test");
        // A verdict below an authenticated submission's Received header was written by
        // the submitter, whatever server name it carries.
        let submitted = format!(
            "Received: from [127.0.0.1] by mx.nanoclaw.test (Postfix) with ESMTPSA id 1\r\n\t for <andy@nanoclaw.test>; Mon, 5 Jan 2026 10:00:00 +0000\r\n{TRUSTED}"
        );
        let m = read(&mail(&submitted, "x"), &RULES).expect("parsed");
        assert!(m.flagged.is_some(), "{m:?}");
        let relayed = format!(
            "{TRUSTED}\r\nReceived: from [10.0.0.1] by smtp.trusted.test with ESMTPSA id 2\r\n\t for <andy@nanoclaw.test>; Mon, 5 Jan 2026 09:59:00 +0000"
        );
        let m = read(&mail(&relayed, "x"), &RULES).expect("parsed");
        assert_eq!(
            m.flagged, None,
            "the receiver's verdict above the sender's own submission counts"
        );
        let ok = read(
            &mail(&format!("{TRUSTED}\r\nAuto-Submitted: no"), "x"),
            &RULES,
        )
        .expect("parsed");
        assert_eq!(ok.flagged, None);
    }

    #[test]
    fn html_only_attachments_and_odd_mail_are_read() {
        let html =
            format!("{TRUSTED}\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n");
        let m = read(
            &mail(&html, "<p>Hello <b>there</b></p><script>x()</script>"),
            &RULES,
        )
        .expect("parsed");
        assert!(m.content.contains("Hello"), "{}", m.content);
        assert!(!m.content.contains('<'), "{}", m.content);

        let multipart = format!(
            "{TRUSTED}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n"
        );
        let body = "--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nsmall\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .to_string()
            + &"QUFB".repeat(400)
            + "\r\n--b--\r\n";
        let m = read(&mail(&multipart, &body), &RULES).expect("parsed");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].name, "notes.txt");
        assert_eq!(m.too_large, [("big.bin".to_string(), 1200)]);

        // No text part at all, an unknown charset, a broken boundary: read, not refused.
        let no_text = format!(
            "{TRUSTED}\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        );
        let m = read(&mail(&no_text, "iVBORw0KGgo="), &RULES).expect("parsed");
        assert_eq!(m.content, "Re: Plants");
        let charset = format!("{TRUSTED}\r\nContent-Type: text/plain; charset=x-unknown-42\r\n");
        let m = read(&mail(&charset, "caf\u{e9}"), &RULES).expect("parsed");
        assert!(m.content.contains("caf"));
        let broken = format!("{TRUSTED}\r\nContent-Type: multipart/mixed; boundary=\"never\"\r\n");
        read(&mail(&broken, "--other\r\nhalf a part"), &RULES).expect("parsed");
        assert!(read(b"", &RULES).is_err());
        // Without Message-ID: a stable id of its own.
        let a = read(b"From: a@trusted.test\r\n\r\nx", &RULES).expect("parsed");
        let b = read(b"From: a@trusted.test\r\n\r\nx", &RULES).expect("parsed");
        assert_eq!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with("nomid."));
    }
}
