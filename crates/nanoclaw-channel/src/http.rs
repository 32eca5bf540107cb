//! HTTP clients: reqwest with rustls on the ring provider (installed once), so https
//! works without OpenSSL and without a C toolchain beyond what SQLite needs.

/// Installs the ring provider as rustls's default (once), for every TLS user.
pub fn install_tls_provider() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with TLS ready.
pub fn client() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}

/// Whether `url`'s host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A platform endpoint that will carry a token: `https://`/`wss://`, or plain
/// `http://`/`ws://` to this machine only (a test double, a local proxy), so a token
/// never crosses a network in clear text.
pub fn check_endpoint(setting: &str, url: &str) -> Result<(), String> {
    let secure = url.starts_with("https://") || url.starts_with("wss://");
    let plain = url.starts_with("http://") || url.starts_with("ws://");
    if secure || (plain && is_loopback(url)) {
        Ok(())
    } else if plain {
        Err(format!(
            "{setting} is {url:?}: plain http:// or ws:// is only allowed to this machine \
             (the token would cross the network unencrypted); use https:// or wss://"
        ))
    } else {
        Err(format!(
            "{setting} is {url:?}; it must be a URL starting with https:// (or wss://)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_endpoints_only_to_this_machine() {
        for ok in [
            "https://discord.com",
            "wss://gateway.discord.gg",
            "http://127.0.0.1:9/api",
            "ws://localhost:80",
            "http://[::1]:8080/x",
            "http://127.9.9.9",
        ] {
            assert!(check_endpoint("X", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://192.168.1.2:9",
            "ws://example.org",
            "http://127.0.0.1.evil.org",
            "http://user@10.0.0.1",
            "ftp://127.0.0.1",
            "discord.com",
        ] {
            assert!(check_endpoint("X", bad).is_err(), "{bad}");
        }
    }
}
