//! SPEC §13.5's settings, checked once at start with errors that say what to fix.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nanoclaw_channel::http::is_loopback;

/// How a connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (`imaps://`, `smtps://`).
    Tls,
    /// STARTTLS; `required` unless the host is this machine (where plain text is allowed
    /// when the server does not offer it).
    StartTls { required: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
}

/// How the account logs in, for IMAP and SMTP alike.
#[derive(Clone)]
pub enum Auth {
    Password(String),
    /// XOAUTH2 with access tokens from `token_url` (refresh-token grant).
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        refresh_token: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password(_) => f.write_str("Password([redacted])"),
            Auth::OAuth2 { token_url, .. } => write!(f, "OAuth2 {{ token_url: {token_url:?} }}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `EMAIL_ADDRESS`, lowercased: what replies come from.
    pub address: String,
    /// `EMAIL_USER` (default: the address).
    pub user: String,
    pub auth: Auth,
    pub imap: Endpoint,
    pub smtp: Endpoint,
    /// `EMAIL_MAILBOX` (default `INBOX`).
    pub mailbox: String,
    /// `EMAIL_TLS_CA_FILE`: a PEM file of extra trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// `EMAIL_AUTHSERV_ID`: whose `Authentication-Results` count (None: the topmost).
    pub authserv_id: Option<String>,
    /// `EMAIL_TRUST_UNAUTHENTICATED=1`: mail triggers without passing the trust rule.
    pub trust_unauthenticated: bool,
    /// Attachments larger than this are named in the prompt but not saved
    /// (`EMAIL_MAX_ATTACHMENT_MB`, default 10).
    pub max_attachment_bytes: usize,
    pub assistant_name: String,
}

/// Google's token endpoint, the default for Gmail accounts.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

impl EmailConfig {
    /// Reads the `EMAIL_*` settings. `Ok(None)`: the channel is not configured (no
    /// `EMAIL_ADDRESS` and nothing else set); `Err`: what is missing or wrong.
    pub fn from_settings(
        settings: &BTreeMap<String, String>,
        assistant_name: &str,
    ) -> Result<Option<EmailConfig>, String> {
        let get = |name: &str| {
            settings
                .get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let Some(address) = get("EMAIL_ADDRESS") else {
            return match settings.iter().find(|(_, v)| !v.trim().is_empty()) {
                None => Ok(None),
                Some((name, _)) => Err(format!(
                    "{name} is set but EMAIL_ADDRESS is not: set EMAIL_ADDRESS to the assistant's mail address"
                )),
            };
        };
        let address = address.to_ascii_lowercase();
        if !valid_address(&address) {
            return Err(format!(
                "EMAIL_ADDRESS is {address:?}, which is not a mail address (like andy@example.org)"
            ));
        }
        let require = |name: &str, example: &str| {
            get(name)
                .ok_or_else(|| format!("EMAIL_ADDRESS is set but {name} is not (like {example})"))
        };
        let imap_url = require("EMAIL_IMAP_URL", "imaps://imap.gmail.com:993")?;
        let smtp_url = require("EMAIL_SMTP_URL", "smtps://smtp.gmail.com:465")?;
        let imap = endpoint("EMAIL_IMAP_URL", imap_url, "imap", 143, 993)?;
        let smtp = endpoint("EMAIL_SMTP_URL", smtp_url, "smtp", 587, 465)?;
        let gmail = imap.host.eq_ignore_ascii_case("imap.gmail.com")
            || imap.host.to_ascii_lowercase().ends_with(".gmail.com")
            || imap.host.eq_ignore_ascii_case("imap.googlemail.com");
        let auth = match (get("EMAIL_PASSWORD"), get("EMAIL_OAUTH2_REFRESH_TOKEN")) {
            (Some(_), Some(_)) => {
                return Err(
                    "both EMAIL_PASSWORD and EMAIL_OAUTH2_REFRESH_TOKEN are set: keep one".into(),
                );
            }
            (Some(password), None) => Auth::Password(password.to_string()),
            (None, Some(refresh)) => {
                let token_url = match get("EMAIL_OAUTH2_TOKEN_URL") {
                    Some(url) => url.to_string(),
                    None if gmail => GOOGLE_TOKEN_URL.to_string(),
                    None => {
                        return Err("EMAIL_OAUTH2_REFRESH_TOKEN is set but EMAIL_OAUTH2_TOKEN_URL is not (your provider's OAuth2 token endpoint)".into());
                    }
                };
                nanoclaw_channel::http::check_endpoint("EMAIL_OAUTH2_TOKEN_URL", &token_url)?;
                Auth::OAuth2 {
                    token_url,
                    client_id: require(
                        "EMAIL_OAUTH2_CLIENT_ID",
                        "1234.apps.googleusercontent.com",
                    )?
                    .to_string(),
                    client_secret: require("EMAIL_OAUTH2_CLIENT_SECRET", "GOCSPX-…")?.to_string(),
                    refresh_token: refresh.to_string(),
                }
            }
            (None, None) => {
                return Err("EMAIL_ADDRESS is set but neither EMAIL_PASSWORD (for Gmail an app password) nor EMAIL_OAUTH2_REFRESH_TOKEN is".into());
            }
        };
        let ca_file = get("EMAIL_TLS_CA_FILE").map(PathBuf::from);
        if let Some(path) = &ca_file
            && !path.is_file()
        {
            return Err(format!(
                "EMAIL_TLS_CA_FILE is {}, which is not a readable file",
                path.display()
            ));
        }
        let trust_unauthenticated = match get("EMAIL_TRUST_UNAUTHENTICATED") {
            None | Some("0") | Some("false") | Some("no") => false,
            Some("1") | Some("true") | Some("yes") => true,
            Some(other) => {
                return Err(format!(
                    "EMAIL_TRUST_UNAUTHENTICATED is {other:?}; use 1 or 0"
                ));
            }
        };
        let max_attachment_bytes = match get("EMAIL_MAX_ATTACHMENT_MB") {
            None => 10 << 20,
            Some(v) => match v.parse::<usize>() {
                Ok(mb) if (1..=1024).contains(&mb) => mb << 20,
                _ => {
                    return Err(format!(
                        "EMAIL_MAX_ATTACHMENT_MB is {v:?}; use a whole number of megabytes from 1 to 1024"
                    ));
                }
            },
        };
        Ok(Some(EmailConfig {
            user: get("EMAIL_USER").unwrap_or(&address).to_string(),
            address,
            auth,
            imap,
            smtp,
            mailbox: get("EMAIL_MAILBOX").unwrap_or("INBOX").to_string(),
            ca_file,
            authserv_id: get("EMAIL_AUTHSERV_ID")
                .map(str::to_string)
                .or_else(|| gmail.then(|| "mx.google.com".to_string())),
            trust_unauthenticated,
            max_attachment_bytes,
            assistant_name: assistant_name.to_string(),
        }))
    }

    /// The domain of the assistant's address (for Message-IDs).
    pub fn domain(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d)
    }
}

/// `local@domain`, one `@`, no spaces or angle brackets.
pub fn valid_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !address
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';' | '"'))
        && !local.contains('@')
}

/// `imaps://host:993`, `imap://host:143` (STARTTLS), the same for SMTP.
fn endpoint(
    setting: &str,
    url: &str,
    plain_scheme: &str,
    plain_port: u16,
    tls_port: u16,
) -> Result<Endpoint, String> {
    let bad = |why: &str| {
        format!(
            "{setting} is {url:?}: {why} (like {plain_scheme}s://mail.example.org:{tls_port}, or {plain_scheme}://mail.example.org:{plain_port} with STARTTLS)"
        )
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it has no scheme"))?;
    let tls = if scheme.eq_ignore_ascii_case(&format!("{plain_scheme}s")) {
        true
    } else if scheme.eq_ignore_ascii_case(plain_scheme) {
        false
    } else {
        return Err(bad(&format!(
            "the scheme must be {plain_scheme}s or {plain_scheme}"
        )));
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains(['/', '@', '?', '#']) {
        return Err(bad("it must be only a scheme, host and port"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            (host.to_string(), after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        },
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let port = match port {
        None => {
            if tls {
                tls_port
            } else {
                plain_port
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
    };
    let loopback = is_loopback(&format!("x://{authority}"));
    Ok(Endpoint {
        host,
        port,
        security: if tls {
            Security::Tls
        } else {
            Security::StartTls {
                required: !loopback,
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: [(&str, &str); 4] = [
        ("EMAIL_ADDRESS", "Andy@Example.org"),
        ("EMAIL_IMAP_URL", "imaps://mail.example.org"),
        ("EMAIL_SMTP_URL", "smtp://mail.example.org"),
        ("EMAIL_PASSWORD", "app-password"),
    ];

    #[test]
    fn a_complete_configuration_with_defaults() {
        let c = EmailConfig::from_settings(&settings(&BASE), "Andy")
            .expect("valid")
            .expect("configured");
        assert_eq!(c.address, "andy@example.org");
        assert_eq!(c.user, "andy@example.org");
        assert_eq!(c.mailbox, "INBOX");
        assert_eq!(
            c.imap,
            Endpoint {
                host: "mail.example.org".into(),
                port: 993,
                security: Security::Tls
            }
        );
        assert_eq!(c.smtp.port, 587);
        assert_eq!(c.smtp.security, Security::StartTls { required: true });
        assert_eq!(c.authserv_id, None);
        assert!(!c.trust_unauthenticated);
        assert_eq!(c.domain(), "example.org");
    }

    #[test]
    fn gmail_gets_its_authserv_id_and_token_endpoint() {
        let c = EmailConfig::from_settings(
            &settings(&[
                ("EMAIL_ADDRESS", "me@gmail.com"),
                ("EMAIL_IMAP_URL", "imaps://imap.gmail.com:993"),
                ("EMAIL_SMTP_URL", "smtps://smtp.gmail.com:465"),
                ("EMAIL_OAUTH2_CLIENT_ID", "id"),
                ("EMAIL_OAUTH2_CLIENT_SECRET", "secret"),
                ("EMAIL_OAUTH2_REFRESH_TOKEN", "refresh"),
            ]),
            "Andy",
        )
        .expect("valid")
        .expect("configured");
        assert_eq!(c.authserv_id.as_deref(), Some("mx.google.com"));
        assert!(matches!(&c.auth, Auth::OAuth2 { token_url, .. } if token_url == GOOGLE_TOKEN_URL));
        assert!(
            !format!("{c:?}").contains("refresh"),
            "secrets never in Debug"
        );
    }

    #[test]
    fn plain_text_only_to_this_machine() {
        let mut s = settings(&BASE);
        s.insert("EMAIL_IMAP_URL".into(), "imap://127.0.0.1:1143".into());
        s.insert("EMAIL_SMTP_URL".into(), "smtp://localhost:2525".into());
        let c = EmailConfig::from_settings(&s, "Andy")
            .expect("valid")
            .expect("on");
        assert_eq!(c.imap.security, Security::StartTls { required: false });
        assert_eq!(c.smtp.security, Security::StartTls { required: false });
        assert_eq!((c.imap.host.as_str(), c.imap.port), ("127.0.0.1", 1143));
    }

    #[test]
    fn mistakes_say_what_to_fix() {
        assert!(matches!(
            EmailConfig::from_settings(&BTreeMap::new(), "Andy"),
            Ok(None)
        ));
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[("EMAIL_PASSWORD", "x")], "EMAIL_ADDRESS is not"),
            (&[("EMAIL_ADDRESS", "not-an-address")], "not a mail address"),
            (&[("EMAIL_ADDRESS", "a@b.c")], "EMAIL_IMAP_URL is not"),
            (
                &[
                    ("EMAIL_ADDRESS", "a@b.c"),
                    ("EMAIL_IMAP_URL", "https://x"),
                    ("EMAIL_SMTP_URL", "smtp://x"),
                ],
                "the scheme must be imaps or imap",
            ),
            (
                &[
                    ("EMAIL_ADDRESS", "a@b.c"),
                    ("EMAIL_IMAP_URL", "imap://x:99999"),
                    ("EMAIL_SMTP_URL", "smtp://x"),
                ],
                "the port",
            ),
            (
                &[
                    ("EMAIL_ADDRESS", "a@b.c"),
                    ("EMAIL_IMAP_URL", "imap://x"),
                    ("EMAIL_SMTP_URL", "smtp://x"),
                ],
                "neither EMAIL_PASSWORD",
            ),
            (
                &[
                    ("EMAIL_ADDRESS", "a@b.c"),
                    ("EMAIL_IMAP_URL", "imap://x"),
                    ("EMAIL_SMTP_URL", "smtp://x"),
                    ("EMAIL_OAUTH2_REFRESH_TOKEN", "r"),
                ],
                "EMAIL_OAUTH2_TOKEN_URL is not",
            ),
            (
                &[
                    ("EMAIL_ADDRESS", "a@b.c"),
                    ("EMAIL_IMAP_URL", "imap://x"),
                    ("EMAIL_SMTP_URL", "smtp://x"),
                    ("EMAIL_PASSWORD", "p"),
                    ("EMAIL_TRUST_UNAUTHENTICATED", "maybe"),
                ],
                "use 1 or 0",
            ),
        ];
        for (pairs, want) in cases {
            let err = EmailConfig::from_settings(&settings(pairs), "Andy").expect_err("refused");
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
    }
}
