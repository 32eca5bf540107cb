//! Real mail servers for the email channel's tests: Debian's dovecot (IMAP, LMTP, SASL,
//! an OAuth2 passdb) and postfix (an inbound port that writes the receiving server's
//! `Authentication-Results`, submission with AUTH), started in the foreground on
//! loopback ports with a throw-away configuration by `scripts/mail-servers.sh`, and
//! stopped by PID when this value is dropped (a watchdog also stops them if the test
//! process dies).
//!
//! Test accounts (password `secret`): `assistant@nanoclaw.test`, `alice@trusted.test`,
//! `mallory@forged.test`. Mail into the inbound port from `…@trusted.test` gets
//! `dmarc=pass` from `mx.nanoclaw.test`; from anyone else, `dmarc=fail`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct MailServers {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mail-servers.sh")
}

impl MailServers {
    /// Starts dovecot, postfix and the fake OAuth2 endpoint; panics with the script's
    /// output when they cannot start (run `scripts/test-tools.sh` as root first).
    pub fn start() -> MailServers {
        MailServers::start_with(&[])
    }

    /// Like [`start`](MailServers::start), with extra environment for the script
    /// (e.g. `TOKEN_SECONDS`).
    pub fn start_with(env: &[(&str, &str)]) -> MailServers {
        let dir = tempfile::Builder::new()
            .prefix("nanoclaw-mail-")
            .tempdir()
            .expect("temp dir for the mail servers");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path().join("servers"))
            .env("WATCH_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/mail-servers.sh");
        assert!(
            out.status.success(),
            "scripts/mail-servers.sh start failed (are dovecot and postfix installed? scripts/test-tools.sh installs them, as root):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("servers/env")).expect("servers/env");
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        MailServers { dir, env }
    }

    /// A value of the script's `env` file (`IMAP_PORT`, `OAUTH_TOKEN_URL`, …).
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} not in the mail servers' env"))
    }

    pub fn port(&self, key: &str) -> u16 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a port"))
    }

    /// The CA that signed the servers' certificate (for `EMAIL_TLS_CA_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        PathBuf::from(self.get("MAIL_CA"))
    }

    /// Stops one server (`dovecot`, `postfix`, `oauth`) and starts it again with the same
    /// configuration and ports.
    /// The last lines of each server's log, for a failing test to show.
    pub fn log_tails(&self, lines: usize) -> String {
        let dir = self.dir.path().join("servers/logs");
        let mut out = String::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for path in names {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!("--- {}\n{}\n", path.display(), tail.join("\n")));
        }
        out
    }

    pub fn restart(&self, name: &str) {
        self.script("restart", name);
    }

    /// Stops one of them (`dovecot`, `postfix`, `oauth`); [`MailServers::restart`]
    /// starts it again.
    pub fn stop(&self, name: &str) {
        self.script("stop", name);
    }

    fn script(&self, command: &str, name: &str) {
        let out = Command::new("bash")
            .arg(script())
            .arg(command)
            .arg(self.dir.path().join("servers"))
            .arg(name)
            .output()
            .expect("run scripts/mail-servers.sh");
        assert!(
            out.status.success(),
            "{command} {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Hands `raw` (headers, blank line, body; `\n` or `\r\n`) to postfix's inbound port
    /// as `MAIL FROM:<from>` to `rcpt`, the way another mail server would; returns once
    /// postfix accepted it (250 after the data).
    pub fn deliver(&self, from: &str, rcpt: &str, raw: &str) {
        let stream =
            TcpStream::connect(("127.0.0.1", self.port("SMTP_PORT"))).expect("connect to postfix");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let expect = |code: &str, reader: &mut BufReader<TcpStream>| loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read from postfix");
            assert!(
                line.starts_with(code),
                "postfix said {line:?}, wanted {code}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        };
        expect("220", &mut reader);
        let mut say = |line: &str| {
            writer
                .write_all(format!("{line}\r\n").as_bytes())
                .expect("write to postfix")
        };
        say("EHLO sender.example");
        expect("250", &mut reader);
        say(&format!("MAIL FROM:<{from}>"));
        expect("250", &mut reader);
        say(&format!("RCPT TO:<{rcpt}>"));
        expect("250", &mut reader);
        say("DATA");
        expect("354", &mut reader);
        let normalized = raw.replace("\r\n", "\n");
        for line in normalized.split('\n') {
            // Dot-stuffing.
            if line.starts_with('.') {
                say(&format!(".{line}"));
            } else {
                say(line);
            }
        }
        say(".");
        expect("250", &mut reader);
        say("QUIT");
    }

    /// Every mail in `user`'s INBOX, raw, oldest first (read over IMAP as that user).
    pub async fn mailbox(&self, user: &str) -> Vec<String> {
        self.mailbox_of(user, "INBOX").await
    }

    async fn session(&self, user: &str) -> async_imap::Session<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port("IMAP_PORT")))
            .await
            .expect("connect to dovecot");
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.expect("greeting");
        client
            .login(user, self.get("MAIL_PASSWORD"))
            .await
            .map_err(|(e, _)| e)
            .expect("log in to dovecot")
    }

    /// Every mail in a folder of `user`: `(raw, seen)`, oldest first.
    async fn fetch_all(&self, user: &str, folder: &str) -> Vec<(String, bool)> {
        use futures_util::TryStreamExt;
        let mut session = self.session(user).await;
        session.select(folder).await.expect("select");
        let mut mails: Vec<(u32, String, bool)> = {
            let fetched: Vec<_> = session
                .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")
                .await
                .expect("fetch")
                .try_collect()
                .await
                .expect("fetch");
            fetched
                .iter()
                .filter_map(|f| {
                    let seen = f.flags().any(|fl| fl == async_imap::types::Flag::Seen);
                    Some((
                        f.uid?,
                        String::from_utf8_lossy(f.body()?).into_owned(),
                        seen,
                    ))
                })
                .collect()
        };
        let _ = session.logout().await;
        mails.sort_by_key(|(uid, _, _)| *uid);
        mails.into_iter().map(|(_, m, seen)| (m, seen)).collect()
    }

    /// Every mail in a folder of `user`, raw.
    pub async fn mailbox_of(&self, user: &str, folder: &str) -> Vec<String> {
        self.fetch_all(user, folder)
            .await
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    /// Whether each mail in `user`'s INBOX carries `\Seen`, oldest first.
    pub async fn seen(&self, user: &str) -> Vec<bool> {
        self.fetch_all(user, "INBOX")
            .await
            .into_iter()
            .map(|(_, seen)| seen)
            .collect()
    }

    /// Puts `raw` straight into `user`'s INBOX over IMAP (no MX, so no
    /// `Authentication-Results` of the receiving server).
    pub async fn append(&self, user: &str, raw: &str) {
        let mut session = self.session(user).await;
        session
            .append(
                "INBOX",
                None,
                None,
                raw.replace("\r\n", "\n").replace('\n', "\r\n"),
            )
            .await
            .expect("append");
        let _ = session.logout().await;
    }

    /// `user`'s Maildir on disk.
    pub fn maildir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.split_once('@').expect("an address");
        Path::new(self.get("MAIL_DIR"))
            .join("mail")
            .join(domain)
            .join(local)
            .join("Maildir")
    }

    /// Waits until `user`'s INBOX holds `n` mails; returns them.
    pub async fn wait_mailbox(&self, user: &str, n: usize) -> Vec<String> {
        crate::wait_for(
            &format!("{n} mails for {user}"),
            crate::DEADLINE,
            || async {
                let mails = self.mailbox(user).await;
                (mails.len() >= n).then_some(mails)
            },
        )
        .await
    }
}

impl Drop for MailServers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path().join("servers"))
            .output();
    }
}

/// A header's value in a raw mail (the first occurrence, unfolded).
pub fn header(raw: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = raw.lines().take_while(|l| !l.is_empty()).peekable();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            let mut value = line[prefix.len()..].trim().to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with([' ', '\t']) {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(value);
        }
    }
    None
}
