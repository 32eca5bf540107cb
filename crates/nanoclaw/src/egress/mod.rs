//! The egress proxy: how a sandbox under the `internet` network policy (SPEC §7) reaches
//! the network, and the only way it can.
//!
//! Such a sandbox has no network interface but loopback. Its one way out is a Unix socket
//! of its own (`/run/nanoclaw/egress.sock`), served here, in the host, by a listener that
//! belongs to that one sandbox and so knows which group it speaks for. Inside, a tiny
//! bridge (`nanoclaw-agent egress-bridge`) offers the socket as `127.0.0.1:3128`, and
//! `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` point tools at it. The listener speaks HTTP
//! proxying (`CONNECT host:port`, and absolute-form `http://` requests) and SOCKS5
//! (`CONNECT`), told apart by the first byte.
//!
//! Every destination is resolved here and every address checked right before the
//! connection is made to exactly that address ([`policy::not_public`], the host's own
//! addresses, `allowedDomains`), so neither an address literal nor a DNS answer that
//! points inside (rebinding) gets through. Each refusal is logged with the group and the
//! reason, and answered with a message that says why.

pub mod policy;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

pub use policy::{DomainPattern, EgressPolicy, Host};

/// The socket's name in a sandbox's `/run/nanoclaw/`.
pub const SOCKET_NAME: &str = "egress.sock";
/// Where the in-sandbox bridge listens; tools are pointed here.
pub const SANDBOX_PROXY_ADDR: &str = "127.0.0.1:3128";
/// Connections one sandbox may hold open at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must say where it wants to go within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to one resolved address may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (HTTP proxying).
const MAX_HEAD: usize = 32 * 1024;

/// Name resolution, behind a trait so tests can answer with any address.
#[async_trait]
pub trait Resolve: Send + Sync {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The host's resolver (`getaddrinfo`).
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((name, port)).await?.collect())
    }
}

/// The policy of one sandbox, and whom it is for (in logs).
pub struct Gate {
    pub group: String,
    pub policy: EgressPolicy,
    pub resolver: Arc<dyn Resolve>,
}

/// A refused destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub target: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nanoclaw's egress policy refused {}: {}",
            self.target, self.reason
        )
    }
}

impl Gate {
    /// The addresses a connection to `host:port` may use, in resolver order; a
    /// refusal if there are none.
    pub async fn admit(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let target = format!("{host}:{port}");
        let refuse = |reason: String| Refusal {
            target: target.clone(),
            reason,
        };
        self.policy.admits_name(host).map_err(&refuse)?;
        if port == 0 {
            return Err(refuse("port 0 is not a destination".into()));
        }
        let candidates = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => {
                match tokio::time::timeout(REQUEST_TIMEOUT, self.resolver.resolve(name, port)).await
                {
                    Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
                    Ok(Ok(_)) => return Err(refuse(format!("{name} has no address"))),
                    Ok(Err(e)) => return Err(refuse(format!("{name} cannot be resolved ({e})"))),
                    Err(_) => return Err(refuse(format!("resolving {name} timed out"))),
                }
            }
        };
        let own = host_addresses();
        let mut first_reason = None;
        let admitted: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|addr| {
                let ip = canonical(addr.ip());
                let why = policy::not_public(ip)
                    .or_else(|| own.contains(&ip).then_some("an address of this host"));
                match why {
                    Some(why) => {
                        first_reason.get_or_insert((addr.ip(), why));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        if admitted.is_empty() {
            let (ip, why) = first_reason.unwrap_or((IpAddr::from([0, 0, 0, 0]), "unusable"));
            return Err(refuse(match host {
                Host::Name(name) => format!("{name} resolves to {ip}, {why}"),
                Host::Ip(_) => format!("{ip} is {why}"),
            }));
        }
        Ok(admitted)
    }

    /// Admits and connects, trying each admitted address in turn.
    async fn connect(&self, host: &Host, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = self.admit(host, port).await.map_err(|r| {
            tracing::warn!(group = %self.group, target = %r.target, reason = %r.reason, "egress refused");
            ConnectError::Refused(r)
        })?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tracing::debug!(group = %self.group, %addr, "egress connected");
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }
        }
        Err(ConnectError::Failed(last.unwrap_or_else(|| {
            io::Error::other("no address to connect to")
        })))
    }
}

enum ConnectError {
    Refused(Refusal),
    Failed(io::Error),
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The addresses of this host's interfaces, in its network namespace: a host with a
/// public address must not be reachable through it either.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<IpAddr> = None;
        for line in trie.lines() {
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("|-- ") {
                last = addr.parse().ok();
            } else if line.contains("host LOCAL")
                && let Some(ip) = last
                && !found.contains(&ip)
            {
                found.push(ip);
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                let ip = IpAddr::V6(std::net::Ipv6Addr::from(bits));
                if !found.contains(&ip) {
                    found.push(ip);
                }
            }
        }
    }
    found
}

/// Serves one sandbox's egress socket at `path` until `shutdown` turns true (or the
/// returned task is aborted). The socket is connectable by anyone who can reach it: it
/// is mounted into that one sandbox only.
pub fn serve(
    path: &Path,
    gate: Arc<Gate>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut warned = false;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(group = %gate.group, "egress socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                if !warned {
                    tracing::warn!(group = %gate.group, "egress: the sandbox already holds {MAX_CONNECTIONS} connections; closing more");
                    warned = true;
                }
                continue;
            };
            warned = false;
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = handle(stream, &gate).await {
                    tracing::debug!(group = %gate.group, "egress connection ended: {e}");
                }
            });
        }
    }))
}

async fn handle(mut client: UnixStream, gate: &Gate) -> io::Result<()> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(REQUEST_TIMEOUT, client.read(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    if n == 0 {
        return Ok(());
    }
    if first[0] == 5 {
        socks5(client, gate).await
    } else {
        http(client, first[0], gate).await
    }
}

/// HTTP proxying: `CONNECT host:port` opens a tunnel; an absolute-form `http://` request
/// is sent on to its origin (one request per connection).
async fn http(mut client: UnixStream, first: u8, gate: &Gate) -> io::Result<()> {
    let mut head = vec![first];
    let end = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find_head_end(&head) {
                return Ok(end);
            }
            if head.len() > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            let n = client.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "incomplete request head"))??;
    let rest = head.split_off(end);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
        return respond(
            &mut client,
            400,
            "the egress proxy could not read this request",
        )
        .await;
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return respond(
            &mut client,
            400,
            "the egress proxy could not read this request",
        )
        .await;
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_authority(target, None) else {
            return respond(&mut client, 400, "CONNECT needs host:port").await;
        };
        let mut upstream = match gate.connect(&host, port).await {
            Ok(s) => s,
            Err(e) => return refuse_http(&mut client, e).await,
        };
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    let Some(after_scheme) = target.strip_prefix("http://") else {
        let why = if target.starts_with("https://") {
            "https:// requests go through CONNECT (set HTTPS_PROXY)"
        } else {
            "send requests in absolute form (http://host/path), as proxy clients do"
        };
        return respond(&mut client, 400, why).await;
    };
    let (authority, path) = match after_scheme.find(['/', '?']) {
        Some(i) => (&after_scheme[..i], &after_scheme[i..]),
        None => (after_scheme, "/"),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let Some((host, port)) = split_authority(authority, Some(80)) else {
        return respond(&mut client, 400, "the request's URL has no usable host").await;
    };
    let mut upstream = match gate.connect(&host, port).await {
        Ok(s) => s,
        Err(e) => return refuse_http(&mut client, e).await,
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for h in request.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // One request per connection: a second request on it must not reach this origin
    // without its own check.
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    upstream.write_all(&out).await?;
    upstream.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `host:port` (IPv6 in brackets); `default` when the port is absent.
fn split_authority(authority: &str, default: Option<u16>) -> Option<(Host, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']')?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default?,
            None => return None,
        };
        (&authority[..close + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default?),
        }
    };
    Some((Host::parse(host)?, port))
}

async fn respond(client: &mut UnixStream, status: u16, text: &str) -> io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let body = format!("{text}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nx-nanoclaw-egress: {}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        if status == 403 { "denied" } else { "error" }
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

async fn refuse_http(client: &mut UnixStream, e: ConnectError) -> io::Result<()> {
    match e {
        ConnectError::Refused(r) => respond(client, 403, &r.to_string()).await,
        ConnectError::Failed(e) => {
            respond(
                client,
                502,
                &format!("the egress proxy could not connect: {e}"),
            )
            .await
        }
    }
}

/// SOCKS5 (RFC 1928), `CONNECT` only, without authentication.
async fn socks5(mut client: UnixStream, gate: &Gate) -> io::Result<()> {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let n_methods = client.read_u8().await? as usize;
        let mut methods = vec![0u8; n_methods];
        client.read_exact(&mut methods).await?;
        if !methods.contains(&0) {
            client.write_all(&[5, 0xff]).await?;
            return Err(io::Error::other(
                "the client offers no method without authentication",
            ));
        }
        client.write_all(&[5, 0]).await?;
        let mut header = [0u8; 4];
        client.read_exact(&mut header).await?;
        let [version, command, _, address_type] = header;
        if version != 5 {
            return Err(io::Error::other("not SOCKS5"));
        }
        let host = match address_type {
            1 => {
                let mut b = [0u8; 4];
                client.read_exact(&mut b).await?;
                Host::Ip(IpAddr::from(b))
            }
            4 => {
                let mut b = [0u8; 16];
                client.read_exact(&mut b).await?;
                Host::Ip(IpAddr::from(b))
            }
            3 => {
                let len = client.read_u8().await? as usize;
                let mut b = vec![0u8; len];
                client.read_exact(&mut b).await?;
                let name = String::from_utf8_lossy(&b).into_owned();
                match Host::parse(&name) {
                    Some(h) => h,
                    None => {
                        reply_socks(&mut client, 1).await?;
                        return Err(io::Error::other(format!("{name:?} is not a host name")));
                    }
                }
            }
            _ => {
                reply_socks(&mut client, 8).await?;
                return Err(io::Error::other("unknown SOCKS address type"));
            }
        };
        let port = client.read_u16().await?;
        if command != 1 {
            // Only CONNECT; BIND and UDP ASSOCIATE are not offered.
            reply_socks(&mut client, 7).await?;
            return Err(io::Error::other("only SOCKS CONNECT is supported"));
        }
        Ok((host, port))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "incomplete SOCKS request"))??;
    let (host, port) = request;
    let mut upstream = match gate.connect(&host, port).await {
        Ok(s) => s,
        Err(ConnectError::Refused(_)) => return reply_socks(&mut client, 2).await,
        Err(ConnectError::Failed(e)) => {
            let code = match e.kind() {
                io::ErrorKind::ConnectionRefused => 5,
                io::ErrorKind::TimedOut => 4,
                _ => 1,
            };
            return reply_socks(&mut client, code).await;
        }
    };
    reply_socks(&mut client, 0).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn reply_socks<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    code: u8,
) -> io::Result<()> {
    client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeDns(HashMap<&'static str, Vec<&'static str>>);

    #[async_trait]
    impl Resolve for FakeDns {
        async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            Ok(self
                .0
                .get(name)
                .map(|ips| {
                    ips.iter()
                        .map(|ip| SocketAddr::new(ip.parse().expect("ip"), port))
                        .collect()
                })
                .unwrap_or_default())
        }
    }

    fn gate(allowed: Option<&[&str]>) -> Gate {
        Gate {
            group: "team".into(),
            policy: EgressPolicy {
                allowed_domains: allowed.map(|list| {
                    list.iter()
                        .map(|d| DomainPattern::parse(d).expect("pattern"))
                        .collect()
                }),
            },
            resolver: Arc::new(FakeDns(HashMap::from([
                ("rebind.example", vec!["127.0.0.1"]),
                ("lan.example", vec!["192.168.1.1", "fd00::1"]),
                ("mixed.example", vec!["10.0.0.1", "93.184.215.14"]),
                ("public.example", vec!["93.184.215.14"]),
                ("mapped.example", vec!["::ffff:127.0.0.1"]),
            ]))),
        }
    }

    fn host(s: &str) -> Host {
        Host::parse(s).expect("host")
    }

    #[tokio::test]
    async fn names_are_judged_by_every_address_they_resolve_to() {
        let g = gate(None);
        let e = g
            .admit(&host("rebind.example"), 80)
            .await
            .expect_err("loopback");
        assert!(e.reason.contains("127.0.0.1, a loopback"), "{e}");
        let e = g
            .admit(&host("mapped.example"), 80)
            .await
            .expect_err("mapped");
        assert!(e.reason.contains("loopback"), "{e}");
        let e = g
            .admit(&host("lan.example"), 80)
            .await
            .expect_err("private");
        assert!(e.reason.contains("private"), "{e}");
        assert_eq!(
            g.admit(&host("mixed.example"), 443)
                .await
                .expect("public part"),
            vec!["93.184.215.14:443".parse::<SocketAddr>().expect("addr")],
            "only the public address is used"
        );
        let e = g
            .admit(&host("unknown.example"), 80)
            .await
            .expect_err("nxdomain");
        assert!(e.reason.contains("no address"), "{e}");
        let e = g
            .admit(&host("169.254.169.254"), 80)
            .await
            .expect_err("metadata");
        assert!(e.reason.contains("link-local"), "{e}");
        assert!(g.admit(&host("93.184.215.14"), 80).await.is_ok());
        assert!(g.admit(&host("93.184.215.14"), 0).await.is_err());
    }

    #[tokio::test]
    async fn the_hosts_own_addresses_are_refused() {
        let g = gate(None);
        for ip in host_addresses() {
            assert!(
                g.admit(&Host::Ip(ip), 22).await.is_err(),
                "{ip} belongs to this host"
            );
        }
    }

    #[tokio::test]
    async fn allowed_domains_narrow_the_policy() {
        let g = gate(Some(&["public.example"]));
        assert!(g.admit(&host("public.example"), 443).await.is_ok());
        let e = g
            .admit(&host("mixed.example"), 443)
            .await
            .expect_err("not listed");
        assert!(e.reason.contains("allowedDomains"), "{e}");
        let e = g
            .admit(&host("93.184.215.14"), 443)
            .await
            .expect_err("literal");
        assert!(e.reason.contains("address"), "{e}");
    }

    #[test]
    fn authorities() {
        let cases = [
            ("example.com:443", None, Some(("example.com", 443))),
            ("example.com", Some(80), Some(("example.com", 80))),
            ("example.com", None, None),
            ("[::1]:8080", None, Some(("[::1]", 8080))),
            ("[::1]", Some(80), Some(("[::1]", 80))),
            ("10.0.0.1:x", None, None),
        ];
        for (text, default, want) in cases {
            let got = split_authority(text, default).map(|(h, p)| (h.to_string(), p));
            assert_eq!(got, want.map(|(h, p)| (h.to_string(), p)), "{text}");
        }
    }

    /// Drives the socket end to end with a refused target (nothing is contacted).
    #[tokio::test]
    async fn refusals_are_answered_in_each_protocol() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(SOCKET_NAME);
        let (_stop, stop_rx) = watch::channel(false);
        let _server = serve(&path, Arc::new(gate(None)), stop_rx).expect("serve");

        let mut c = UnixStream::connect(&path).await.expect("connect");
        c.write_all(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("loopback"), "{answer}");

        let mut c = UnixStream::connect(&path).await.expect("connect");
        c.write_all(b"GET http://rebind.example/ HTTP/1.1\r\nHost: rebind.example\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        let mut c = UnixStream::connect(&path).await.expect("connect");
        c.write_all(&[5, 1, 0]).await.expect("greeting");
        let mut reply = [0u8; 2];
        c.read_exact(&mut reply).await.expect("method");
        assert_eq!(reply, [5, 0]);
        let mut request = vec![5, 1, 0, 3, 14];
        request.extend_from_slice(b"rebind.example");
        request.extend_from_slice(&80u16.to_be_bytes());
        c.write_all(&request).await.expect("request");
        let mut reply = [0u8; 10];
        c.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply[1], 2, "connection not allowed by ruleset");
    }
}
