//! The SMTP side: replies as plain-text mail in the correspondent's thread, through
//! lettre (one connection per reply: an assistant sends little mail, and a fresh
//! connection takes a fresh OAuth2 token).

use std::time::Duration;

use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use nanoclaw_channel::{ChannelError, SendRetry};

use crate::config::{EmailConfig, Security};

/// One outgoing mail.
pub struct Outgoing<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub message_id: &'a str,
    /// `(In-Reply-To, References)`, each with `<>`.
    pub thread: Option<(String, String)>,
    /// A file attached: name, media type, bytes.
    pub attachment: Option<(&'a str, &'a str, Vec<u8>)>,
}

fn error(message: impl Into<String>, retry: SendRetry) -> ChannelError {
    ChannelError::new("email", message).with_retry(retry)
}

/// Builds the transport for one reply; `secret` is the password or access token.
fn transport(
    config: &EmailConfig,
    ca_pem: Option<&[u8]>,
    secret: &str,
    oauth: bool,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, ChannelError> {
    let smtp = &config.smtp;
    let tls_parameters = || {
        let mut builder = TlsParameters::builder(smtp.host.clone());
        if let Some(pem) = ca_pem {
            let cert = Certificate::from_pem(pem).map_err(|e| {
                error(
                    format!("EMAIL_TLS_CA_FILE is not a usable PEM certificate: {e}"),
                    SendRetry::Later,
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map_err(|e| error(format!("SMTP TLS setup: {e}"), SendRetry::Later))
    };
    let tls = match smtp.security {
        Security::Tls => Tls::Wrapper(tls_parameters()?),
        Security::StartTls { required: true } => Tls::Required(tls_parameters()?),
        Security::StartTls { required: false } => Tls::Opportunistic(tls_parameters()?),
    };
    Ok(
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
            .port(smtp.port)
            .tls(tls)
            .hello_name(ClientId::Domain(config.domain().to_string()))
            .credentials(Credentials::new(config.user.clone(), secret.to_string()))
            .authentication(if oauth {
                vec![Mechanism::Xoauth2]
            } else {
                vec![Mechanism::Plain, Mechanism::Login]
            })
            .timeout(Some(Duration::from_secs(60)))
            .build(),
    )
}

/// Connects, logs in and leaves: whether the SMTP settings work.
pub async fn check(
    config: &EmailConfig,
    ca_pem: Option<&[u8]>,
    secret: &str,
    oauth: bool,
) -> Result<(), nanoclaw_channel::VerifyError> {
    use nanoclaw_channel::VerifyError;
    let transport =
        transport(config, ca_pem, secret, oauth).map_err(|e| VerifyError::Refused(e.message))?;
    match transport.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err(VerifyError::Unreachable(format!(
            "the SMTP server at {}:{} closed the connection",
            config.smtp.host, config.smtp.port
        ))),
        Err(e) if e.is_permanent() => Err(VerifyError::Refused(format!(
            "the SMTP server refused the login of {} ({e}): check EMAIL_USER and EMAIL_PASSWORD (for Gmail, an app password)",
            config.user
        ))),
        Err(e) => Err(VerifyError::Unreachable(format!(
            "SMTP {}:{}: {e}",
            config.smtp.host, config.smtp.port
        ))),
    }
}

/// Sends one mail. Refusals the server means for good (a 5xx: no such recipient,
/// relaying denied) give the reply up; anything else is tried again later.
pub async fn send(
    config: &EmailConfig,
    ca_pem: Option<&[u8]>,
    secret: &str,
    oauth: bool,
    mail: Outgoing<'_>,
) -> Result<(), ChannelError> {
    let from = Mailbox::new(
        Some(config.assistant_name.clone()),
        config
            .address
            .parse()
            .map_err(|e| error(format!("EMAIL_ADDRESS: {e}"), SendRetry::Never))?,
    );
    let to: Mailbox = mail.to.parse().map_err(|e| {
        error(
            format!("{:?} is not an address mail can go to: {e}", mail.to),
            SendRetry::Never,
        )
    })?;
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject)
        .message_id(Some(mail.message_id.to_string()))
        .date_now();
    if let Some((in_reply_to, references)) = mail.thread {
        builder = builder.in_reply_to(in_reply_to).references(references);
    }
    // RFC 3834: an answer by a program, so other responders do not answer it back.
    builder = builder.header(AutoSubmitted);
    let text = SinglePart::plain(mail.text.to_string());
    let built = match mail.attachment {
        None => builder.singlepart(text),
        Some((name, media_type, bytes)) => {
            let content_type = lettre::message::header::ContentType::parse(media_type)
                .unwrap_or(lettre::message::header::ContentType::TEXT_PLAIN);
            let file = lettre::message::Attachment::new(name.to_string()).body(bytes, content_type);
            builder.multipart(
                lettre::message::MultiPart::mixed()
                    .singlepart(text)
                    .singlepart(file),
            )
        }
    };
    let message =
        built.map_err(|e| error(format!("cannot build the mail: {e}"), SendRetry::Never))?;
    let transport = transport(config, ca_pem, secret, oauth)?;
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => {
            let auth = e.to_string().to_ascii_lowercase().contains("auth")
                || e.status().is_some_and(|c| c.to_string().starts_with("535"));
            if auth {
                // A refused login is ours to fix, not the reply's fault: keep it.
                Err(error(
                    format!(
                        "the SMTP server refused the login of {} ({e}): check EMAIL_USER and EMAIL_PASSWORD",
                        config.user
                    ),
                    SendRetry::Later,
                ))
            } else {
                Err(error(
                    format!("the SMTP server refused the reply for good: {e}"),
                    SendRetry::Never,
                ))
            }
        }
        Err(e) => Err(error(format!("SMTP: {e}"), SendRetry::Later)),
    }
}

/// `Auto-Submitted: auto-replied`.
#[derive(Clone)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "auto-replied".to_string())
    }
}
