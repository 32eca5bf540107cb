//! NanoClaw's email channel (SPEC §13.5): a correspondent is a chat (`mail:{address}`);
//! mail arrives over IMAP IDLE and replies leave over SMTP in the correspondent's
//! thread. Gmail works through the same, with an app password or OAuth2 (XOAUTH2).
//!
//! A From header is easy to forge, so mail only reaches an agent when the receiving
//! server's `Authentication-Results` vouch for the sender's domain ([`trust`]); forged,
//! automatic and bounced mail is stored flagged and never run.

pub mod body;
mod config;
mod imap;
pub mod inbound;
mod oauth;
mod smtp;
mod tls;
pub mod trust;

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use nanoclaw_channel::{
    Channel, ChannelCondition, ChannelError, ChannelHost, ChatMeta, Message, OutboundMessage,
    SendRetry, VerifyError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use config::{Auth, EmailConfig, Endpoint, Security};

const PREFIX: &str = "mail:";
/// `…{address}` → the correspondent's newest thread ([`Thread`]).
const THREAD_PREFIX: &str = "email:thread:";
/// The mailbox position ([`imap::Position`]).
pub(crate) const MAILBOX_STATE: &str = "email:mailbox";
/// Attachments saved per mail; the rest are named as not saved.
const MAX_ATTACHMENTS: usize = 20;
/// Bytes of a mail's text stored (and shown to the agent); the rest is cut with a note.
const MAX_STORED_TEXT: usize = 256 * 1024;

/// A mail's text as stored: at most [`MAX_STORED_TEXT`] bytes, cut at a character.
fn cap_stored(text: &str) -> String {
    if text.len() <= MAX_STORED_TEXT {
        return text.to_string();
    }
    let mut end = MAX_STORED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n\n[the rest of this mail ({}) was not stored]",
        &text[..end],
        inbound::size(text.len() - end)
    )
}

/// The mail a reply answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Thread {
    subject: String,
    /// Without `<>`.
    message_id: String,
    /// Without `<>`, oldest first.
    references: Vec<String>,
}

pub struct Email {
    config: EmailConfig,
    tls: Arc<rustls::ClientConfig>,
    ca_pem: Option<Vec<u8>>,
    tokens: Option<oauth::Tokens>,
    condition: Mutex<ChannelCondition>,
    host: Mutex<Option<Arc<dyn ChannelHost>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Email {
    pub fn new(config: EmailConfig) -> Result<Arc<Email>, String> {
        nanoclaw_channel::http::install_tls_provider();
        let tls = tls::client_config(config.ca_file.as_deref())?;
        let ca_pem =
            match &config.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    format!("cannot read EMAIL_TLS_CA_FILE {}: {e}", path.display())
                })?),
                None => None,
            };
        let tokens = match &config.auth {
            Auth::Password(_) => None,
            Auth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                refresh_token,
            } => Some(oauth::Tokens::new(
                token_url,
                client_id,
                client_secret,
                refresh_token,
            )?),
        };
        Ok(Arc::new(Email {
            config,
            tls,
            ca_pem,
            tokens,
            condition: Mutex::new(ChannelCondition::Connecting),
            host: Mutex::new(None),
        }))
    }

    /// The chat of a correspondent.
    pub fn jid(address: &str) -> String {
        format!("{PREFIX}{}", address.trim().to_ascii_lowercase())
    }

    pub(crate) fn set_condition(&self, condition: ChannelCondition) {
        *lock(&self.condition) = condition;
    }

    /// Stores one fetched mail: flagged when it must never reach an agent, with its
    /// attachments saved into the group's folder (registered chats only) and named in
    /// the text, and remembers it as the correspondent's newest thread.
    pub(crate) async fn store_mail(
        &self,
        host: &Arc<dyn ChannelHost>,
        uid: u32,
        raw: &[u8],
    ) -> Result<(), String> {
        let rules = inbound::Rules {
            own_address: &self.config.address,
            authserv_id: self.config.authserv_id.as_deref(),
            trust_unauthenticated: self.config.trust_unauthenticated,
            max_attachment_bytes: self.config.max_attachment_bytes,
        };
        let mail = match inbound::read(raw, &rules) {
            Ok(mail) => mail,
            Err(why) => {
                tracing::warn!(
                    "email: skipping mail UID {uid} ({} bytes): {why}",
                    raw.len()
                );
                return Ok(());
            }
        };
        let jid = Email::jid(&mail.correspondent);
        if host.has_message(&jid, &mail.message_id).await {
            // Handed again (a new UIDVALIDITY, a resent copy): stored already, and its
            // attachments saved already.
            tracing::debug!("email: {} is stored already", mail.message_id);
            return Ok(());
        }
        let mut content = cap_stored(&mail.content);
        if mail.flagged.is_none() && !mail.from_me {
            let mut notes = Vec::new();
            let (saved, skipped) = mail
                .attachments
                .split_at(mail.attachments.len().min(MAX_ATTACHMENTS));
            if !skipped.is_empty() {
                tracing::warn!(
                    "email: mail {} has {} attachments; saving the first {MAX_ATTACHMENTS}",
                    mail.message_id,
                    mail.attachments.len()
                );
                notes.push(format!(
                    "[{} more attachments not saved: at most {MAX_ATTACHMENTS} per mail]",
                    skipped.len()
                ));
            }
            for a in saved {
                let size = inbound::size(a.bytes.len());
                match host.save_file(&jid, &a.name, &a.bytes).await {
                    Ok(Some(path)) => notes.push(format!("[attachment: {path} ({size})]")),
                    Ok(None) => notes.push(format!(
                        "[attachment: {} ({size}), not saved: no group is registered for this chat]",
                        a.name
                    )),
                    Err(e) => {
                        tracing::warn!(
                            "email: attachment {:?} of {}: {e}",
                            a.name,
                            mail.message_id
                        );
                        notes.push(format!(
                            "[attachment: {} ({size}), could not be saved]",
                            a.name
                        ));
                    }
                }
            }
            for (name, bytes) in &mail.too_large {
                tracing::info!(
                    "email: attachment {name:?} of {} not saved: {} is over EMAIL_MAX_ATTACHMENT_MB",
                    mail.message_id,
                    inbound::size(*bytes)
                );
                notes.push(format!(
                    "[attachment: {name} ({}), not saved: larger than {}]",
                    inbound::size(*bytes),
                    inbound::size(self.config.max_attachment_bytes)
                ));
            }
            if !notes.is_empty() {
                content = format!("{content}\n\n{}", notes.join("\n"));
            }
        } else if let Some(why) = &mail.flagged {
            tracing::warn!(
                "email: mail {} from {} is stored but will never be answered: {why}",
                mail.message_id,
                mail.from
            );
        }
        let chat = ChatMeta {
            jid: jid.clone(),
            name: Some(if mail.from_name == mail.from {
                mail.from.clone()
            } else {
                format!("{} <{}>", mail.from_name, mail.from)
            }),
            timestamp: mail.timestamp.clone(),
            channel: Some("email".into()),
            is_group: Some(false),
        };
        let message = Message {
            id: mail.message_id.clone(),
            chat_jid: jid,
            sender: mail.from.clone(),
            sender_name: mail.from_name.clone(),
            content,
            timestamp: mail.timestamp.clone(),
            is_from_me: mail.from_me,
            is_bot_message: mail.from_me,
            flagged: mail.flagged.clone(),
        };
        let chat = if mail.from_me || mail.flagged.is_some() {
            // The chat's name comes from the correspondent's own mail, not ours, and
            // not from mail nobody vouches for (a forger would rename the chat).
            ChatMeta { name: None, ..chat }
        } else {
            chat
        };
        host.deliver(chat, message).await?;
        if mail.flagged.is_none() && !mail.from_me && !mail.from.is_empty() {
            let thread = Thread {
                subject: mail.subject.clone(),
                message_id: mail.message_id.clone(),
                references: mail.references.clone(),
            };
            let value = serde_json::to_string(&thread).unwrap_or_default();
            if let Err(e) = host
                .save_state(&format!("{THREAD_PREFIX}{}", mail.from), &value)
                .await
            {
                tracing::warn!(
                    "email: cannot remember the thread of {}: {e}",
                    mail.message_id
                );
            }
        }
        Ok(())
    }

    /// The password, or an access token valid for a while.
    async fn smtp_secret(&self) -> Result<(String, bool), ChannelError> {
        match (&self.config.auth, &self.tokens) {
            (Auth::Password(p), _) => Ok((p.clone(), false)),
            (Auth::OAuth2 { .. }, Some(tokens)) => match tokens.access_token(false).await {
                Ok(t) => Ok((t, true)),
                Err(oauth::TokenError::Refused(why) | oauth::TokenError::Failed(why)) => {
                    Err(ChannelError::new("email", why))
                }
            },
            (Auth::OAuth2 { .. }, None) => Err(ChannelError::new("email", "no OAuth2 tokens")),
        }
    }
}

#[async_trait]
impl Channel for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    /// Logs in to IMAP (and opens the mailbox) and to SMTP, then leaves.
    async fn verify(&self) -> Result<String, VerifyError> {
        imap::check(self).await?;
        let (secret, oauth) = match (&self.config.auth, &self.tokens) {
            (Auth::Password(p), _) => (p.clone(), false),
            (Auth::OAuth2 { .. }, Some(tokens)) => match tokens.access_token(false).await {
                Ok(t) => (t, true),
                Err(oauth::TokenError::Refused(why)) => return Err(VerifyError::Refused(why)),
                Err(oauth::TokenError::Failed(why)) => return Err(VerifyError::Unreachable(why)),
            },
            (Auth::OAuth2 { .. }, None) => {
                return Err(VerifyError::Refused(
                    "OAuth2 is configured without tokens".into(),
                ));
            }
        };
        smtp::check(&self.config, self.ca_pem.as_deref(), &secret, oauth).await?;
        Ok(format!(
            "{} logs in to {}:{} (IMAP) and {}:{} (SMTP)",
            self.config.user,
            self.config.imap.host,
            self.config.imap.port,
            self.config.smtp.host,
            self.config.smtp.port
        ))
    }

    fn owns_jid(&self, jid: &str) -> bool {
        jid.starts_with(PREFIX)
    }

    fn is_connected(&self) -> bool {
        matches!(*lock(&self.condition), ChannelCondition::Connected { .. })
    }

    fn condition(&self) -> ChannelCondition {
        lock(&self.condition).clone()
    }

    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError> {
        let address = message
            .chat_jid
            .strip_prefix(PREFIX)
            .filter(|a| config::valid_address(a))
            .ok_or_else(|| {
                ChannelError::new(
                    "email",
                    format!(
                        "{:?} is not a mail chat (mail:{{address}})",
                        message.chat_jid
                    ),
                )
                .with_retry(SendRetry::Never)
            })?;
        let host = lock(&self.host).clone();
        let thread: Option<Thread> = match &host {
            Some(host) => host
                .load_state(&format!("{THREAD_PREFIX}{address}"))
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_str(&v).ok()),
            None => None,
        };
        // The same on every attempt, so a repeat after a crash is recognisable.
        let message_id = format!(
            "<{}@{}>",
            nanoclaw_channel::piece_key(message, 0),
            self.config.domain()
        );
        let (subject, threading) = match &thread {
            Some(t) => {
                let mut references: Vec<String> = t.references.clone();
                references.push(t.message_id.clone());
                let references = references
                    .iter()
                    .map(|id| format!("<{id}>"))
                    .collect::<Vec<_>>()
                    .join(" ");
                (
                    body::reply_subject(&t.subject),
                    Some((format!("<{}>", t.message_id), references)),
                )
            }
            None => {
                let subject = body::first_line_subject(&message.text);
                (
                    match &message.file {
                        _ if !subject.is_empty() => subject,
                        Some(file) => body::first_line_subject(&file.name),
                        None => format!("From {}", self.config.assistant_name),
                    },
                    None,
                )
            }
        };
        let attachment = match &message.file {
            Some(file) => Some((
                file.name.as_str(),
                file.media_type(),
                file.read("email").await?,
            )),
            None => None,
        };
        let (secret, oauth) = self.smtp_secret().await?;
        smtp::send(
            &self.config,
            self.ca_pem.as_deref(),
            &secret,
            oauth,
            smtp::Outgoing {
                to: address,
                subject: &subject,
                text: &message.text,
                message_id: &message_id,
                thread: threading,
                attachment,
            },
        )
        .await
    }

    /// Attachments grow by a third in base64; 20 MB stays under the 25 MB most mail
    /// providers take.
    fn max_file_bytes(&self) -> Option<u64> {
        Some(20 << 20)
    }

    async fn run(self: Arc<Self>, host: Arc<dyn ChannelHost>, shutdown: watch::Receiver<bool>) {
        *lock(&self.host) = Some(Arc::clone(&host));
        imap::run(self, host, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_is_capped_at_a_character_with_a_note() {
        assert_eq!(cap_stored("short"), "short");
        let long = "é".repeat(MAX_STORED_TEXT); // two bytes each
        let capped = cap_stored(&long);
        assert!(capped.len() < MAX_STORED_TEXT + 100, "{}", capped.len());
        assert!(
            capped.ends_with("was not stored]"),
            "{}",
            &capped[capped.len() - 60..]
        );
    }
}
