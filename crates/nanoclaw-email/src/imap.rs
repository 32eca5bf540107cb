//! The IMAP side: connect (TLS, or STARTTLS), log in (password or XOAUTH2), select the
//! mailbox, store every mail that arrived after the channel's first connection (by UID,
//! so mail that came while the daemon was down is read too), mark it `\Seen`, and wait
//! in IDLE for the next one. Reconnects with the shared policy of every channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::UnsolicitedResponse;
use futures_util::TryStreamExt;
use nanoclaw_channel::{ChannelCondition, ChannelHost, Outcome, Reconnects};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::config::{Auth, Security};
use crate::oauth::TokenError;
use crate::{Email, MAILBOX_STATE};

/// IMAP over any stream (TLS, or plain on loopback), as one session type.
pub trait ImapIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> ImapIo
    for T
{
}
type Session = async_imap::Session<Box<dyn ImapIo>>;
type Client = async_imap::Client<Box<dyn ImapIo>>;

/// IDLE is renewed before servers' 30-minute limit (RFC 2177 asks for 29).
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);
/// Servers without IDLE are asked this often.
const POLL: Duration = Duration::from_secs(30);
/// Connecting, TLS and each command.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where reading stands: the mailbox's UIDVALIDITY and the next UID to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub uid_validity: u32,
    pub next_uid: u32,
    /// Which account, server and mailbox this is a position in (a hash; 0 in positions
    /// saved before it was recorded). Another one starts afresh, as a first connection.
    #[serde(default)]
    pub mailbox_key: u64,
    /// The day (days since 1970, UTC) the position was last saved: after a UIDVALIDITY
    /// change only unseen mail from then on is read again, not the whole history.
    #[serde(default)]
    pub day: i64,
}

/// Today as days since 1970 (UTC).
fn today() -> i64 {
    jiff::Timestamp::now().as_second().div_euclid(86_400)
}

/// An IMAP SEARCH date (`1-Dec-2026`) for a day number.
fn imap_date(day: i64) -> String {
    jiff::Timestamp::from_second(day.saturating_mul(86_400))
        .map(|t| t.strftime("%-d-%b-%Y").to_string())
        .unwrap_or_else(|_| "1-Jan-1970".into())
}

/// The hash that tells positions in different mailboxes apart.
fn mailbox_key(email: &Email) -> u64 {
    let c = &email.config;
    let id = format!("{}\n{}:{}\n{}", c.user, c.imap.host, c.imap.port, c.mailbox);
    // FNV-1a: stable across builds (std's hasher is not).
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    }) | 1
}

pub async fn run(
    email: Arc<Email>,
    host: Arc<dyn ChannelHost>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnects = Reconnects::new("email");
    loop {
        if *shutdown.borrow() {
            return;
        }
        email.set_condition(ChannelCondition::Connecting);
        let started = Instant::now();
        let outcome = session(&email, &host, &mut shutdown).await;
        let go_on = reconnects
            .after(
                outcome,
                started.elapsed(),
                |c| email.set_condition(c),
                &mut shutdown,
            )
            .await;
        if !go_on {
            return;
        }
    }
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Outcome> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Outcome::Retry(format!("IMAP {what}: {e}"))),
        Err(_) => Err(Outcome::Retry(format!(
            "IMAP {what}: no answer in {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

async fn connect(email: &Email) -> Result<Client, Outcome> {
    let imap = &email.config.imap;
    let tcp = timed(
        &format!("connecting to {}:{}", imap.host, imap.port),
        TcpStream::connect((imap.host.as_str(), imap.port)),
    )
    .await?;
    let name = rustls::pki_types::ServerName::try_from(imap.host.clone())
        .map_err(|e| Outcome::Fatal(format!("EMAIL_IMAP_URL's host {:?}: {e}", imap.host)))?;
    let connector = TlsConnector::from(Arc::clone(&email.tls));
    match imap.security {
        Security::Tls => {
            let tls = timed("TLS", connector.connect(name, tcp)).await?;
            let mut client = async_imap::Client::new(Box::new(tls) as Box<dyn ImapIo>);
            greeting(&mut client).await?;
            Ok(client)
        }
        Security::StartTls { required } => {
            let mut client = async_imap::Client::new(tcp);
            greeting(&mut client).await?;
            match timed(
                "STARTTLS",
                client.run_command_and_check_ok("STARTTLS", None),
            )
            .await
            {
                Ok(()) => {
                    let tcp = client.into_inner();
                    let tls = timed("TLS after STARTTLS", connector.connect(name, tcp)).await?;
                    Ok(async_imap::Client::new(Box::new(tls) as Box<dyn ImapIo>))
                }
                Err(e) if required => Err(match e {
                    Outcome::Retry(why) => Outcome::Fatal(format!(
                        "{why}: the server at {}:{} does not offer STARTTLS, and the password must not cross the network in clear text; use imaps:// in EMAIL_IMAP_URL",
                        imap.host, imap.port
                    )),
                    other => other,
                }),
                Err(_) => {
                    tracing::info!(
                        "email: {}:{} offers no STARTTLS; plain text on this machine",
                        imap.host,
                        imap.port
                    );
                    let plain = client.into_inner();
                    Ok(async_imap::Client::new(Box::new(plain) as Box<dyn ImapIo>))
                }
            }
        }
    }
}

async fn greeting<T>(client: &mut async_imap::Client<T>) -> Result<(), Outcome>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    match timed("greeting", client.read_response()).await? {
        Some(_) => Ok(()),
        None => Err(Outcome::Retry(
            "IMAP: the server closed the connection before its greeting".into(),
        )),
    }
}

struct XOAuth2 {
    payload: String,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        // A second challenge carries the server's error: answer it empty, the tagged NO
        // follows.
        if self.sent {
            String::new()
        } else {
            self.sent = true;
            self.payload.clone()
        }
    }
}

async fn log_in(email: &Email) -> Result<Session, Outcome> {
    let user = &email.config.user;
    match &email.config.auth {
        Auth::Password(password) => {
            let client = connect(email).await?;
            match tokio::time::timeout(TIMEOUT, client.login(user, password)).await {
                Ok(Ok(session)) => Ok(session),
                Ok(Err((async_imap::error::Error::No(why), _))) => Err(Outcome::Fatal(format!(
                    "the IMAP server refused the login of {user} ({}): check EMAIL_USER and EMAIL_PASSWORD (for Gmail, an app password: README, Email)",
                    why.trim()
                ))),
                Ok(Err((e, _))) => Err(Outcome::Retry(format!("IMAP login: {e}"))),
                Err(_) => Err(Outcome::Retry("IMAP login: no answer".into())),
            }
        }
        Auth::OAuth2 { .. } => {
            let Some(tokens) = &email.tokens else {
                return Err(Outcome::Fatal("OAuth2 is configured without tokens".into()));
            };
            // A refused token is tried once more with a fresh one: it may have been
            // revoked on the provider's side or expired early.
            for fresh in [false, true] {
                let token = match tokens.access_token(fresh).await {
                    Ok(t) => t,
                    Err(TokenError::Refused(why)) => return Err(Outcome::Fatal(why)),
                    Err(TokenError::Failed(why)) => return Err(Outcome::Retry(why)),
                };
                let client = connect(email).await?;
                let auth = XOAuth2 {
                    payload: crate::oauth::xoauth2(user, &token),
                    sent: false,
                };
                match tokio::time::timeout(TIMEOUT, client.authenticate("XOAUTH2", auth)).await {
                    Ok(Ok(session)) => return Ok(session),
                    Ok(Err((async_imap::error::Error::No(why), _))) if !fresh => {
                        tracing::info!(
                            "email: the IMAP server refused the access token ({}); getting a new one",
                            why.trim()
                        );
                        tokens.forget().await;
                    }
                    Ok(Err((async_imap::error::Error::No(why), _))) => {
                        return Err(Outcome::Fatal(format!(
                            "the IMAP server refuses XOAUTH2 for {user} even with a new access token ({}): check EMAIL_USER and that the OAuth2 client has the mail scope (https://mail.google.com/ for Gmail)",
                            why.trim()
                        )));
                    }
                    Ok(Err((e, _))) => return Err(Outcome::Retry(format!("IMAP XOAUTH2: {e}"))),
                    Err(_) => return Err(Outcome::Retry("IMAP XOAUTH2: no answer".into())),
                }
            }
            Err(Outcome::Retry("IMAP XOAUTH2 failed".into()))
        }
    }
}

/// Logs in, opens the mailbox and logs out: whether the settings work.
pub(crate) async fn check(email: &Email) -> Result<(), nanoclaw_channel::VerifyError> {
    use nanoclaw_channel::VerifyError;
    let verdict = |o: Outcome| match o {
        Outcome::Fatal(why) => VerifyError::Refused(why),
        Outcome::Retry(why) | Outcome::Reconnect(why) | Outcome::Wait(_, why) => {
            VerifyError::Unreachable(why)
        }
        Outcome::Shutdown => VerifyError::Unreachable("stopped".into()),
    };
    let mut session = log_in(email).await.map_err(verdict)?;
    let mailbox = email.config.mailbox.clone();
    let selected = tokio::time::timeout(TIMEOUT, session.select(&mailbox)).await;
    let _ = tokio::time::timeout(TIMEOUT, session.logout()).await;
    match selected {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(async_imap::error::Error::No(why))) => Err(VerifyError::Refused(format!(
            "the IMAP server has no mailbox {mailbox:?} ({}): check EMAIL_MAILBOX",
            why.trim()
        ))),
        Ok(Err(e)) => Err(VerifyError::Unreachable(format!("IMAP SELECT: {e}"))),
        Err(_) => Err(VerifyError::Unreachable("IMAP SELECT: no answer".into())),
    }
}

/// One connection's life.
async fn session(
    email: &Email,
    host: &Arc<dyn ChannelHost>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    match serve(email, host, shutdown).await {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

async fn serve(
    email: &Email,
    host: &Arc<dyn ChannelHost>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Outcome, Outcome> {
    let mailbox_name = email.config.mailbox.clone();
    let mut session = log_in(email).await?;
    let mailbox = match tokio::time::timeout(TIMEOUT, session.select(&mailbox_name)).await {
        Ok(Ok(m)) => m,
        Ok(Err(async_imap::error::Error::No(why))) => {
            return Err(Outcome::Fatal(format!(
                "the IMAP server has no mailbox {mailbox_name:?} ({}): check EMAIL_MAILBOX",
                why.trim()
            )));
        }
        Ok(Err(e)) => return Err(Outcome::Retry(format!("IMAP SELECT: {e}"))),
        Err(_) => return Err(Outcome::Retry("IMAP SELECT: no answer".into())),
    };
    let idle = timed("CAPABILITY", session.capabilities())
        .await?
        .has_str("IDLE");
    let uid_validity = mailbox.uid_validity.unwrap_or(0);
    let saved: Option<Position> = host
        .load_state(MAILBOX_STATE)
        .await
        .map_err(|e| Outcome::Retry(format!("cannot read the channel's position: {e}")))?
        .and_then(|v| serde_json::from_str(&v).ok());
    let key = mailbox_key(email);
    let saved = saved.filter(|p| {
        let same = p.mailbox_key == 0 || p.mailbox_key == key;
        if !same {
            tracing::info!(
                "email: the account, server or mailbox changed since the last position was saved; starting afresh"
            );
        }
        same
    });
    let mut position = match saved {
        Some(p) if p.uid_validity == uid_validity => Position {
            mailbox_key: key,
            day: today(),
            ..p
        },
        Some(p) => {
            // The server renumbered the mailbox: UIDs mean nothing any more. Read what
            // is still unseen; Message-IDs already stored are not stored again.
            tracing::warn!(
                "email: {mailbox_name}'s UIDVALIDITY changed ({} → {uid_validity}); reading its unseen mail again, known Message-IDs are skipped",
                p.uid_validity
            );
            let query = match p.day {
                0 => "UNSEEN".to_string(),
                // A day early: SINCE compares dates in the server's zone.
                day => format!("UNSEEN SINCE {}", imap_date(day - 1)),
            };
            let unseen = timed("SEARCH UNSEEN", session.uid_search(query)).await?;
            let mut unseen: Vec<u32> = unseen.into_iter().collect();
            unseen.sort_unstable();
            for uid in unseen {
                store_uid(email, host, &mut session, uid).await?;
            }
            Position {
                uid_validity,
                next_uid: mailbox.uid_next.unwrap_or(1),
                mailbox_key: key,
                day: today(),
            }
        }
        None => {
            // First connection: the mailbox's history is not ours to answer.
            let p = Position {
                uid_validity,
                next_uid: mailbox.uid_next.unwrap_or(1),
                mailbox_key: key,
                day: today(),
            };
            tracing::info!(
                "email: first connection to {mailbox_name}; reading mail from UID {} on",
                p.next_uid
            );
            p
        }
    };
    save_position(host, position).await?;
    email.set_condition(ChannelCondition::Connected {
        detail: format!("{} ({mailbox_name})", email.config.address),
    });
    tracing::info!(
        "email: connected as {} to {}:{} ({mailbox_name}{})",
        email.config.user,
        email.config.imap.host,
        email.config.imap.port,
        if idle { ", IDLE" } else { ", polling" }
    );
    loop {
        fetch_new(email, host, &mut session, &mut position).await?;
        if *shutdown.borrow() {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
            return Ok(Outcome::Shutdown);
        }
        if !idle {
            if !nanoclaw_channel::sleep_unless_shutdown(POLL, shutdown).await {
                return Ok(Outcome::Shutdown);
            }
            timed("NOOP", session.noop()).await?;
            continue;
        }
        // Mail that arrived while the last mails were fetched was announced then (an
        // EXISTS among that command's responses), and IDLE announces only what comes
        // after it: look again before waiting, or it would wait for the next renewal.
        let mut announced = false;
        while let Ok(response) = session.unsolicited_responses.try_recv() {
            announced |= matches!(
                response,
                UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
            );
        }
        if announced {
            continue;
        }
        let mut handle = session.idle();
        timed("IDLE", handle.init()).await?;
        let stopped = {
            let (wait, _stop) = handle.wait_with_timeout(IDLE_RENEW);
            tokio::select! {
                r = wait => match r {
                    Ok(IdleResponse::NewData(_)) | Ok(IdleResponse::Timeout) => false,
                    // Also what a dropped connection looks like: DONE will tell.
                    Ok(IdleResponse::ManualInterrupt) => false,
                    Err(e) => return Err(Outcome::Retry(format!("IMAP IDLE: {e}"))),
                },
                _ = shutdown.wait_for(|s| *s) => true,
            }
        };
        session = timed("DONE", handle.done()).await?;
        while session.unsolicited_responses.try_recv().is_ok() {}
        if stopped {
            let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
            return Ok(Outcome::Shutdown);
        }
    }
}

async fn save_position(host: &Arc<dyn ChannelHost>, position: Position) -> Result<(), Outcome> {
    let value = serde_json::to_string(&position).unwrap_or_default();
    host.save_state(MAILBOX_STATE, &value)
        .await
        .map_err(|e| Outcome::Retry(format!("cannot save the channel's position: {e}")))
}

/// Stores every mail from `position.next_uid` on, in UID order.
async fn fetch_new(
    email: &Email,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    position: &mut Position,
) -> Result<(), Outcome> {
    let found = timed(
        "SEARCH",
        session.uid_search(format!("UID {}:*", position.next_uid)),
    )
    .await?;
    // `n:*` always matches the newest mail, even below n.
    let mut uids: Vec<u32> = found
        .into_iter()
        .filter(|uid| *uid >= position.next_uid)
        .collect();
    uids.sort_unstable();
    for uid in uids {
        store_uid(email, host, session, uid).await?;
        position.next_uid = uid.saturating_add(1);
        save_position(host, *position).await?;
    }
    Ok(())
}

/// Fetches one mail, hands it to the host, then marks it `\Seen`. A mail the host
/// could not store stops here (the position does not move past it).
async fn store_uid(
    email: &Email,
    host: &Arc<dyn ChannelHost>,
    session: &mut Session,
    uid: u32,
) -> Result<(), Outcome> {
    let raw = {
        let mut stream = timed(
            "FETCH",
            session.uid_fetch(uid.to_string(), "(UID BODY.PEEK[])"),
        )
        .await?;
        let mut raw = None;
        loop {
            match tokio::time::timeout(TIMEOUT, stream.try_next()).await {
                Ok(Ok(Some(fetch))) => {
                    if fetch.uid == Some(uid)
                        && let Some(body) = fetch.body()
                    {
                        raw = Some(body.to_vec());
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(Outcome::Retry(format!("IMAP FETCH: {e}"))),
                Err(_) => return Err(Outcome::Retry("IMAP FETCH: no answer".into())),
            }
        }
        raw
    };
    let Some(raw) = raw else {
        // Expunged meanwhile.
        return Ok(());
    };
    email
        .store_mail(host, uid, &raw)
        .await
        .map_err(|e| Outcome::Retry(format!("cannot store mail UID {uid}: {e}")))?;
    let marked = timed(
        "STORE \\Seen",
        session.uid_store(uid.to_string(), "+FLAGS.SILENT (\\Seen)"),
    )
    .await?;
    let _: Vec<_> = timed("STORE \\Seen", marked.try_collect::<Vec<_>>()).await?;
    Ok(())
}
