//! The web app's sign-in and the rules every request meets (SPEC §14).
//!
//! - **Host**: a request must be addressed to the daemon's own loopback address and port
//!   (`127.0.0.1:{port}` or `localhost:{port}`). A page on another site that rebinds its
//!   name to 127.0.0.1 sends its own name as `Host` and is refused (DNS rebinding).
//! - **Sign-in**: `nanoclaw ui` asks the daemon (with the bearer token) for a one-time
//!   code and prints `http://127.0.0.1:{port}/login#{code}`; the fragment never reaches a
//!   server log. The page posts it to `/api/session`: a code works once, within 10
//!   minutes, and becomes a session cookie (`HttpOnly`, `SameSite=Strict`).
//! - **CSRF**: a state-changing request authenticated by the cookie must carry an
//!   `Origin` that is the daemon's own. No CORS headers are ever sent.
//! - **Assets** are compiled into the binary and served with a strict
//!   Content-Security-Policy: scripts and styles from this origin only, nothing inline,
//!   no frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use super::{ApiError, HttpState};

/// How long a sign-in code works.
pub const CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The session cookie's name.
pub const COOKIE: &str = "nanoclaw_session";
/// Codes and sessions kept at once (oldest dropped first).
const MAX_CODES: usize = 16;
const MAX_SESSIONS: usize = 64;

/// Outstanding sign-in codes and live sessions (in memory: a restart signs everyone out).
///
/// A session is two secrets: the cookie (SPEC §14) and a second one the page keeps in
/// `localStorage` and sends as `X-Nanoclaw-Session` with every request. Browsers send a
/// 127.0.0.1 cookie to every port of 127.0.0.1, so any local program the user browses to
/// receives it; `localStorage` belongs to one origin, port included. The cookie alone
/// opens nothing.
#[derive(Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    expires: Instant,
    secret: String,
}

/// The header carrying a session's second secret.
pub const SESSION_HEADER: &str = "x-nanoclaw-session";

/// A signed-in session's cookie id (put on the request for handlers that keep
/// streaming, so they can stop when it ends).
#[derive(Clone, Debug)]
pub struct SessionId(pub String);

impl Sessions {
    /// A new single-use code.
    pub fn new_code(&self) -> String {
        let code = crate::ids::random_hex(24);
        let mut codes = lock(&self.codes);
        let now = Instant::now();
        codes.retain(|_, expires| *expires > now);
        while codes.len() >= MAX_CODES {
            let Some(oldest) = codes
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            codes.remove(&oldest);
        }
        codes.insert(code.clone(), now + CODE_LIFETIME);
        code
    }

    /// Spends `code` (valid once, before it expires) for a new session: its cookie id
    /// and its header secret.
    pub fn redeem(&self, code: &str) -> Option<(String, String)> {
        let expires = lock(&self.codes).remove(code)?;
        if Instant::now() >= expires {
            return None;
        }
        let (id, secret) = (crate::ids::random_hex(32), crate::ids::random_hex(32));
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                expires: now + SESSION_LIFETIME,
                secret: secret.clone(),
            },
        );
        Some((id, secret))
    }

    /// The session among `cookies` whose header secret is `secret`, if one is live.
    pub fn check(&self, cookies: &[String], secret: Option<&str>) -> Option<String> {
        let secret = secret?;
        let sessions = lock(&self.sessions);
        let now = Instant::now();
        cookies.iter().find_map(|id| {
            let s = sessions.get(id)?;
            (now < s.expires && super::constant_time_eq(s.secret.as_bytes(), secret.as_bytes()))
                .then(|| id.clone())
        })
    }

    /// Whether the session with this cookie id is still live.
    pub fn is_live(&self, id: &str) -> bool {
        lock(&self.sessions)
            .get(id)
            .is_some_and(|s| Instant::now() < s.expires)
    }

    pub fn end(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `Host` values this daemon answers to.
fn own_hosts(addr: SocketAddr) -> [String; 2] {
    [
        format!("127.0.0.1:{}", addr.port()),
        format!("localhost:{}", addr.port()),
    ]
}

/// Refuses requests addressed to any other host than this daemon's loopback address.
pub async fn require_own_host(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let hosts: Vec<_> = request.headers().get_all(header::HOST).iter().collect();
    let host = hosts
        .first()
        .and_then(|v| v.to_str().ok())
        .map(|h| h.to_ascii_lowercase());
    // An absolute-form target names its own host; it must be ours too.
    let target_ok = request.uri().authority().is_none_or(|a| {
        own_hosts(state.addr)
            .iter()
            .any(|own| own.eq_ignore_ascii_case(a.as_str()))
    });
    let ok = hosts.len() == 1
        && target_ok
        && host
            .as_deref()
            .is_some_and(|h| own_hosts(state.addr).iter().any(|own| own == h));
    if ok {
        return next.run(request).await;
    }
    tracing::warn!(host = ?host, "HTTP request for another host refused");
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this server answers only requests addressed to 127.0.0.1:{} (the Host was {}); a page that pointed its own name here is refused",
            state.addr.port(),
            host.as_deref().unwrap_or("missing")
        ),
    )
    .into_response()
}

/// Every `nanoclaw_session` cookie value the request carries (another page on
/// 127.0.0.1 can set one of its own beside ours).
pub fn session_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// Whether `method` changes state (and so needs a matching `Origin` with a cookie).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request's `Origin` is this daemon's own.
pub fn own_origin(headers: &HeaderMap, addr: SocketAddr) -> bool {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let (Some(origin), None) = (all.next(), all.next()) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    own_hosts(addr)
        .iter()
        .any(|h| origin == format!("http://{h}"))
}

#[derive(Debug, Deserialize)]
pub struct CodeBody {
    code: String,
}

/// `POST /api/session {"code"}`: a sign-in code for a session cookie.
pub async fn sign_in(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: axum::Json<CodeBody>,
) -> Response {
    if !own_origin(&headers, state.addr) {
        tracing::warn!("sign-in from another origin refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "sign in from the link `nanoclaw ui` prints, in this browser",
        )
        .into_response();
    }
    let Some((session, secret)) = state.sessions.redeem(body.code.trim()) else {
        tracing::warn!("a used, expired or unknown sign-in code was refused");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this sign-in link was used already or has expired (links work once, for 10 minutes): run `nanoclaw ui` for a new one",
        )
        .into_response();
    };
    tracing::info!("web UI: signed in with a one-time code");
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    // The page keeps `session` in localStorage and sends it as X-Nanoclaw-Session.
    let mut response = axum::Json(json!({ "signed_in": true, "session": secret })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /api/logout`: signs this browser out.
pub async fn sign_out(
    State(state): State<Arc<HttpState>>,
    session: Option<axum::Extension<SessionId>>,
) -> Response {
    if let Some(axum::Extension(SessionId(id))) = session {
        state.sessions.end(&id);
    }
    let mut response = axum::Json(json!({ "signed_in": false })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("nanoclaw_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// `POST /api/login-codes` (bearer token only): a code for `nanoclaw ui`.
pub async fn new_code(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let code = state.sessions.new_code();
    let url = format!("http://127.0.0.1:{}/login#{code}", state.addr.port());
    axum::Json(json!({ "code": code, "url": url, "expires_in_seconds": CODE_LIFETIME.as_secs() }))
}

/// Headers every response gets (the app's assets add their own, stricter set).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    response
}

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// The policy every page is served with.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /` and `GET /login`: the app (it signs in from the fragment on /login).
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_only_before_it_expires() {
        let s = Sessions::default();
        let code = s.new_code();
        let (id, secret) = s.redeem(&code).expect("first use");
        let cookies = vec!["tossed".to_string(), id.clone()];
        assert_eq!(s.check(&cookies, Some(&secret)), Some(id.clone()));
        assert_eq!(
            s.check(&cookies, None),
            None,
            "the cookie alone opens nothing"
        );
        assert_eq!(s.check(&cookies, Some("guess")), None);
        assert!(s.redeem(&code).is_none(), "single use");
        assert!(s.redeem("guess").is_none());
        let stale = s.new_code();
        lock(&s.codes).insert(stale.clone(), Instant::now() - Duration::from_secs(1));
        assert!(s.redeem(&stale).is_none(), "expired");
        s.end(&id);
        assert!(!s.is_live(&id));
        assert_eq!(s.check(&cookies, Some(&secret)), None);
    }

    #[test]
    fn codes_and_sessions_are_bounded() {
        let s = Sessions::default();
        for _ in 0..100 {
            s.new_code();
        }
        assert!(lock(&s.codes).len() <= MAX_CODES);
    }

    #[test]
    fn cookies_and_origins_are_read_exactly() {
        let addr: SocketAddr = "127.0.0.1:3002".parse().expect("addr");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; nanoclaw_session=abc ; nanoclaw_session=def"),
        );
        assert_eq!(session_cookies(&h), ["abc", "def"]);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3002"),
        );
        assert!(own_origin(&h, addr));
        for other in [
            "http://127.0.0.1:3003",
            "https://127.0.0.1:3002",
            "http://evil.test",
            "null",
        ] {
            h.insert(header::ORIGIN, HeaderValue::from_str(other).expect("v"));
            assert!(!own_origin(&h, addr), "{other}");
        }
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3002"),
        );
        h.append(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!own_origin(&h, addr), "two origins");
        assert!(changes_state(&Method::POST) && changes_state(&Method::DELETE));
        assert!(!changes_state(&Method::GET));
    }
}
