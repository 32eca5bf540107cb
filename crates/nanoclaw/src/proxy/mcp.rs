//! Streamable-HTTP MCP servers of a group (SPEC §9.1), reached for its sandbox:
//! `/mcp/{server}` on the run's proxy socket goes to the server's configured URL with its
//! configured headers, a `${NAME}` in them taken from `.env` when the run started. The
//! sandbox sends only the MCP body and session headers; it never sees the URL's host-side
//! credentials or the headers, and its own token goes no further than this proxy.
//!
//! The group's network policy holds for these requests as for any other traffic of the
//! sandbox: `none` reaches no server, `internet` only public addresses (checked on every
//! request after resolving the name, as the egress proxy does, and narrowed by
//! `allowedDomains`), `full` anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures_util::TryStreamExt;

use super::{InFlight, RunIdentity, error};
use crate::egress::{Gate, Host, SystemResolver};
use crate::mounts::NetworkPolicy;
use crate::mounts::mcp::McpServer;
use crate::sandbox::Prepared;

/// How a run may reach one server.
pub enum Access {
    /// Not at all, and why.
    Refused(String),
    /// Anywhere (`full`).
    Any,
    /// Public addresses admitted by the group's egress gate (`internet`).
    Gate(Arc<Gate>),
}

/// One HTTP server as a run reaches it.
pub struct Route {
    pub url: reqwest::Url,
    /// The headers to add, or why they cannot be made (a secret missing from `.env`).
    pub headers: Result<Vec<(HeaderName, HeaderValue)>, String>,
    pub access: Access,
}

/// A run's routes, by server name. Compared by identity and shown by name only (the
/// headers hold secrets).
#[derive(Clone, Default)]
pub struct Routes(pub Arc<BTreeMap<String, Route>>);

impl Routes {
    pub fn get(&self, name: &str) -> Option<&Route> {
        self.0.get(name)
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl PartialEq for Routes {
    fn eq(&self, other: &Routes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Routes {}

/// Headers of the sandbox's request that are passed on (the MCP transport's own).
const FROM_SANDBOX: [&str; 5] = [
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];
/// Headers of the server's response that are passed back.
const FROM_SERVER: [&str; 3] = ["content-type", "mcp-session-id", "cache-control"];

/// The routes of a run of `prepared`'s group, its secrets read from the root's `.env`.
pub fn routes(root: &std::path::Path, prepared: &Prepared) -> Routes {
    let servers: Vec<_> = prepared
        .container
        .mcp_servers
        .iter()
        .filter_map(|(name, s)| match s {
            McpServer::Http(h) => Some((name, h)),
            McpServer::Stdio(_) => None,
        })
        .collect();
    if servers.is_empty() {
        return Routes::default();
    }
    let dotenv = std::fs::read_to_string(root.join(".env"))
        .ok()
        .and_then(|text| crate::config::dotenv::parse(&text).ok())
        .unwrap_or_default();
    let access = || match prepared.network {
        NetworkPolicy::None => Access::Refused(
            "the group's network policy is \"none\", which reaches nothing but the model API; \
             set \"network\" to \"internet\" or \"full\" in its container_config to use this server"
                .into(),
        ),
        NetworkPolicy::Full => Access::Any,
        NetworkPolicy::Internet => Access::Gate(Arc::new(Gate {
            group: prepared.folder.as_str().to_string(),
            policy: prepared.egress_policy(),
            resolver: Arc::new(SystemResolver),
        })),
    };
    let mut out = BTreeMap::new();
    for (name, server) in servers {
        let Ok(url) = reqwest::Url::parse(&server.url) else {
            continue; // checked when the group was registered
        };
        let headers = server
            .resolved_headers(|secret| dotenv.get(secret).map(|(v, _)| v.clone()))
            .and_then(|pairs| {
                pairs
                    .into_iter()
                    .map(|(n, v)| {
                        let name = HeaderName::from_bytes(n.as_bytes())
                            .map_err(|_| format!("header {n} is not a header name"))?;
                        let mut value = HeaderValue::from_str(&v).map_err(|_| {
                            format!("header {n}: its value (from .env) is not a valid header value")
                        })?;
                        value.set_sensitive(true);
                        Ok((name, value))
                    })
                    .collect()
            });
        out.insert(
            name.clone(),
            Route {
                url,
                headers,
                access: access(),
            },
        );
    }
    Routes(Arc::new(out))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    error(status, "mcp_error", message)
}

/// Forwards a sandbox's request for `/mcp/{server}`.
pub(super) async fn forward(
    identity: &RunIdentity,
    server: &str,
    parts: Parts,
    body: Body,
    in_flight: InFlight,
) -> Response {
    let group = &identity.group_folder;
    let Some(route) = identity.mcp.get(server) else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("this group has no HTTP MCP server named {server:?}"),
        );
    };
    if !matches!(parts.method, Method::POST | Method::GET | Method::DELETE) {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "MCP's streamable HTTP uses POST, GET and DELETE",
        );
    }
    let headers = match &route.headers {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(group = %group, server, "mcp server not reachable: {e}");
            return refuse(StatusCode::BAD_GATEWAY, e);
        }
    };
    let client = match &route.access {
        Access::Refused(why) => return refuse(StatusCode::FORBIDDEN, why),
        Access::Any => plain_client(),
        Access::Gate(gate) => {
            let Some(host) = route.url.host_str().and_then(Host::parse) else {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    "the server's URL has no usable host",
                );
            };
            let port = route.url.port_or_known_default().unwrap_or(443);
            match gate.admit(&host, port).await {
                // Every lookup the connection makes goes through the gate again: a
                // second answer (DNS rebinding) is checked like the first, whatever
                // spelling of the name the HTTP stack resolves.
                Ok(_) => client_builder()
                    .dns_resolver(std::sync::Arc::new(GateResolver {
                        gate: Arc::clone(gate),
                        port,
                    }))
                    .build(),
                Err(refusal) => {
                    tracing::warn!(group = %group, server, target = %refusal.target, reason = %refusal.reason, "mcp server refused by the egress policy");
                    return refuse(StatusCode::FORBIDDEN, &refusal.to_string());
                }
            }
        }
    };
    let Ok(client) = client else {
        return refuse(StatusCode::BAD_GATEWAY, "cannot make an HTTP client");
    };
    let mut request = client.request(parts.method.clone(), route.url.clone());
    for name in FROM_SANDBOX {
        for value in parts.headers.get_all(name) {
            request = request.header(name, value.clone());
        }
    }
    for (name, value) in headers {
        request = request.header(name.clone(), value.clone());
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let upstream = match request
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(group = %group, server, "mcp server unreachable: {}", e.without_url());
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("the MCP server {server:?} cannot be reached"),
            );
        }
    };
    let status = upstream.status();
    if !status.is_success() {
        return error_answer(server, status);
    }
    let mut response = Response::builder().status(status.as_u16());
    if let Some(out) = response.headers_mut() {
        for name in FROM_SERVER {
            for value in upstream.headers().get_all(name) {
                out.append(name, value.clone());
            }
        }
    }
    let body = upstream.bytes_stream().map_ok(move |chunk| {
        // Counted as in flight until the answer has been passed on (or dropped).
        let _ = &in_flight;
        chunk
    });
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| refuse(StatusCode::BAD_GATEWAY, "unreadable answer"))
}

/// A server's error answer, in the proxy's own words: its status, never its body. A
/// body can quote the credentials the proxy sent, in any encoding, and a server that
/// echoes requests would let the sandbox test guesses against any filter, so none is
/// passed on (reviews read secrets back through two filters). A refusal of the
/// credentials says what the user must check.
fn error_answer(server: &str, status: reqwest::StatusCode) -> Response {
    let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = match status.as_u16() {
        401 | 403 => format!(
            "the MCP server {server:?} refused the credentials nanoclaw sent (HTTP {}); check the MCP_… secrets its headers name in nanoclaw's .env",
            status.as_u16()
        ),
        n => format!(
            "the MCP server {server:?} answered HTTP {n} (its answer is not passed on: it could quote the credentials nanoclaw sent)"
        ),
    };
    refuse(code, &message)
}

/// Name resolution for `internet` groups: every answer admitted by the group's egress
/// gate, or no address at all.
struct GateResolver {
    gate: Arc<Gate>,
    port: u16,
}

impl reqwest::dns::Resolve for GateResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let gate = Arc::clone(&self.gate);
        let port = self.port;
        let name = name.as_str().to_string();
        Box::pin(async move {
            let Some(host) = Host::parse(&name) else {
                return Err(format!("{name} is not a host name").into());
            };
            match gate.admit(&host, port).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(refusal) => Err(refusal.to_string().into()),
            }
        })
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    crate::tls::client()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(600))
        // A redirect would carry the configured headers wherever it points, past the
        // policy check.
        .redirect(reqwest::redirect::Policy::none())
        // The host's own proxy settings are not the group's policy.
        .no_proxy()
}

/// The client for `full` groups, made once.
fn plain_client() -> Result<reqwest::Client, reqwest::Error> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let c = client_builder().build()?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve as _;

    /// Answers the first lookup with a public address, every later one with loopback.
    struct Rebinding(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl crate::egress::Resolve for Rebinding {
        async fn resolve(
            &self,
            _name: &str,
            port: u16,
        ) -> std::io::Result<Vec<std::net::SocketAddr>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ip: std::net::IpAddr = if n == 0 {
                [93, 184, 216, 34].into()
            } else {
                [127, 0, 0, 1].into()
            };
            Ok(vec![std::net::SocketAddr::new(ip, port)])
        }
    }

    #[tokio::test]
    async fn every_lookup_of_an_internet_route_is_admitted_again() {
        let gate = Arc::new(Gate {
            group: "g".into(),
            policy: Default::default(),
            resolver: Arc::new(Rebinding(Default::default())),
        });
        let resolver = GateResolver { gate, port: 443 };
        let first: Vec<_> = resolver
            .resolve("mcp.example.com".parse().expect("name"))
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        assert_eq!(first.len(), 1);
        // The rebinding answer, whatever the spelling of the name, gets no address.
        for name in ["mcp.example.com", "mcp.example.com."] {
            let again = resolver.resolve(name.parse().expect("name")).await;
            let err = again.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("127.0.0.1"), "{name}: {err}");
        }
    }
}
