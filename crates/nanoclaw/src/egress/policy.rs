//! What the `internet` network policy lets through (SPEC §7): public unicast addresses
//! only, never the host itself, optionally narrowed to `allowedDomains`. Pure decisions,
//! no I/O: the server in `egress/mod.rs` resolves names and asks here about every
//! address it would connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not on the public internet, or `None` if it is.
///
/// IPv4 follows the IANA special-purpose registry; IPv6 allows only global unicast
/// (`2000::/3`) outside the documentation, 6to4, Teredo and ORCHID ranges, and judges
/// IPv4-mapped and NAT64 addresses by the IPv4 address inside them.
pub fn not_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => not_public_v4(v4),
        IpAddr::V6(v6) => not_public_v6(v6),
    }
}

fn not_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "a \"this network\" address (0.0.0.0/8)",
        (10, _, _) => "a private address (10.0.0.0/8)",
        (100, 64..=127, _) => "a carrier-grade NAT address (100.64.0.0/10)",
        (127, _, _) => "a loopback address (127.0.0.0/8)",
        (169, 254, _) => "a link-local address (169.254.0.0/16)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 0, 0) => "an IETF protocol address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 88, 99) => "a 6to4 relay address (192.88.99.0/24)",
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "a multicast address (224.0.0.0/4)",
        (240..=255, _, _) => "a reserved or broadcast address (240.0.0.0/4)",
        _ => return None,
    })
}

fn not_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return not_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return not_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if ip.is_loopback() {
        return Some("a loopback address (::1)");
    }
    if ip.is_unspecified() {
        return Some("the unspecified address (::)");
    }
    Some(match s[0] {
        0xfe80..=0xfebf => "a link-local address (fe80::/10)",
        0xfc00..=0xfdff => "a unique-local address (fc00::/7)",
        0xff00..=0xffff => "a multicast address (ff00::/8)",
        0x2001 if s[1] == 0x0db8 => "a documentation address (2001:db8::/32)",
        0x2001 if s[1] < 0x0200 => "an IETF protocol address (2001::/23)",
        0x2002 => "a 6to4 address (2002::/16)",
        0x3fff if s[1] < 0x1000 => "a documentation address (3fff::/20)",
        0x2000..=0x3fff => return None,
        _ => "not a global unicast address",
    })
}

/// One entry of `allowedDomains`: `example.com` (that name exactly) or `*.example.com`
/// (any name below it, not the name itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern {
    /// Lowercase, without a trailing dot.
    name: String,
    subdomains: bool,
}

impl DomainPattern {
    pub fn parse(raw: &str) -> Result<DomainPattern, String> {
        let trimmed = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let (subdomains, name) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, trimmed.clone()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "allowedDomains entry {raw:?} is not a domain name; use names like \"example.com\" or \"*.github.com\""
            ));
        }
        if name.parse::<Ipv4Addr>().is_ok() || !name.contains('.') && !subdomains {
            return Err(format!(
                "allowedDomains entry {raw:?} must be a domain name with a dot (addresses cannot be allowed)"
            ));
        }
        Ok(DomainPattern { name, subdomains })
    }

    /// Whether `host` (already lowercased, without trailing dot) is covered.
    pub fn matches(&self, host: &str) -> bool {
        if self.subdomains {
            host.len() > self.name.len()
                && host.ends_with(self.name.as_str())
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.subdomains {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// A host name as a client asked for it, normalised for matching: lowercase, no
/// trailing dot; `None` if it is not a plausible DNS name.
pub fn normalise_host(raw: &str) -> Option<String> {
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    ok.then_some(host)
}

/// The `internet` policy of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// `None`: every public destination; `Some`: only these names (never bare addresses).
    pub allowed_domains: Option<Vec<DomainPattern>>,
}

impl EgressPolicy {
    /// Whether a connection to `host` (a name, or an address literal) may be attempted
    /// at all; the addresses it resolves to are checked separately.
    pub fn admits_name(&self, host: &Host) -> Result<(), String> {
        let Some(allowed) = &self.allowed_domains else {
            return Ok(());
        };
        match host {
            Host::Ip(ip) => Err(format!(
                "{ip} is an address, and this group may only reach the names in allowedDomains"
            )),
            Host::Name(name) if allowed.iter().any(|p| p.matches(name)) => Ok(()),
            Host::Name(name) => Err(format!(
                "{name} is not in the group's allowedDomains ({})",
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    pub fn describe(&self) -> String {
        match &self.allowed_domains {
            None => "public internet only".into(),
            Some(list) => format!(
                "public internet only, and only {}",
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Parses an authority's host part (`[v6]`, v4, or a name).
    pub fn parse(raw: &str) -> Option<Host> {
        let unbracketed = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(Host::Ip(ip));
        }
        normalise_host(raw).map(Host::Name)
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_pass() {
        let refused = [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:192.168.0.1",
            "64:ff9b::a00:1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2002:c000:0204::1",
            "3fff::1",
            "100::1",
            "::127.0.0.1",
        ];
        for text in refused {
            let ip: IpAddr = text.parse().expect(text);
            assert!(not_public(ip).is_some(), "{text} must be refused");
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for text in allowed {
            let ip: IpAddr = text.parse().expect(text);
            assert_eq!(not_public(ip), None, "{text} is public");
        }
    }

    #[test]
    fn domain_patterns() {
        let exact = DomainPattern::parse("Example.COM.").expect("valid");
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com"));
        assert!(!exact.matches("badexample.com"));
        let wild = DomainPattern::parse("*.github.com").expect("valid");
        assert!(wild.matches("api.github.com"));
        assert!(wild.matches("a.b.github.com"));
        assert!(!wild.matches("github.com"));
        assert!(!wild.matches("evilgithub.com"));
        for bad in [
            "",
            "*",
            "*.",
            "exa mple.com",
            "10.0.0.1",
            "localhost",
            "-a.com",
            "a..b",
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowed_domains_admit_names_never_addresses() {
        let policy = EgressPolicy {
            allowed_domains: Some(vec![
                DomainPattern::parse("example.com").expect("valid"),
                DomainPattern::parse("*.github.com").expect("valid"),
            ]),
        };
        assert!(
            policy
                .admits_name(&Host::parse("example.com").expect("host"))
                .is_ok()
        );
        assert!(
            policy
                .admits_name(&Host::parse("api.GitHub.com.").expect("host"))
                .is_ok()
        );
        let e = policy
            .admits_name(&Host::parse("evil.com").expect("host"))
            .expect_err("not listed");
        assert!(e.contains("allowedDomains"), "{e}");
        assert!(
            policy
                .admits_name(&Host::parse("93.184.215.14").expect("host"))
                .is_err()
        );
        assert!(
            EgressPolicy::default()
                .admits_name(&Host::parse("93.184.215.14").expect("host"))
                .is_ok()
        );
    }

    #[test]
    fn hosts_parse_addresses_and_names() {
        assert_eq!(
            Host::parse("[::1]"),
            Some(Host::Ip("::1".parse().expect("ip")))
        );
        assert_eq!(
            Host::parse("10.0.0.1"),
            Some(Host::Ip("10.0.0.1".parse().expect("ip")))
        );
        assert_eq!(Host::parse("A.b."), Some(Host::Name("a.b".into())));
        assert_eq!(Host::parse("a b"), None);
        assert_eq!(Host::parse("a/b"), None);
    }
}
