//! SPEC §13.5's trust rule: a From header is easy to forge, so mail counts as coming from
//! its From address only when the receiving server's `Authentication-Results` header
//! (RFC 8601) says the From domain passed DMARC, or passed DKIM with an aligned signing
//! domain. Pure: header values in, a verdict out.

/// Whether a mail's From can be believed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `how` names the result that vouched for it (`dmarc=pass`, `dkim=pass header.d=…`).
    Trusted {
        how: String,
    },
    Untrusted {
        why: String,
    },
}

impl Trust {
    pub fn is_trusted(&self) -> bool {
        matches!(self, Trust::Trusted { .. })
    }
}

/// One result: `(method, result, properties)`, e.g.
/// `("dkim", "pass", [("header.d", "a.org")])`.
type MethodResult = (String, String, Vec<(String, String)>);

/// One parsed `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Results {
    authserv_id: String,
    methods: Vec<MethodResult>,
}

/// Judges a mail from `from_domain` by its `Authentication-Results` headers, topmost
/// first. With `authserv_id` (`EMAIL_AUTHSERV_ID`) the topmost header of that server
/// counts; without it, the topmost header, whoever added it. Headers below the one that
/// counts were added before the receiving server saw the mail (by the sender, perhaps),
/// so they are never believed.
pub fn judge(headers: &[String], from_domain: &str, authserv_id: Option<&str>) -> Trust {
    let from_domain = from_domain
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if from_domain.is_empty() {
        return Trust::Untrusted {
            why: "the From header has no address".into(),
        };
    }
    let parsed: Vec<Results> = headers.iter().filter_map(|h| parse(h)).collect();
    let header = match authserv_id {
        Some(id) => parsed
            .iter()
            .find(|r| r.authserv_id.eq_ignore_ascii_case(id)),
        None => parsed.first(),
    };
    let Some(header) = header else {
        return Trust::Untrusted {
            why: match authserv_id {
                Some(id) => format!("no Authentication-Results header from {id}"),
                None => "no Authentication-Results header".into(),
            },
        };
    };
    let property = |props: &[(String, String)], name: &str| {
        props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| domain_of(v))
    };
    // At most one DMARC verdict, and not a failure: a header that says both pass and
    // fail (only a confused or tricked server writes that) vouches for nothing, and a
    // DMARC failure is not undone by a DKIM pass.
    let dmarc: Vec<&str> = header
        .methods
        .iter()
        .filter(|(m, _, _)| m.eq_ignore_ascii_case("dmarc"))
        .map(|(_, r, _)| r.as_str())
        .collect();
    let failed = |r: &&str| {
        ["fail", "temperror", "permerror"]
            .iter()
            .any(|f| r.eq_ignore_ascii_case(f))
    };
    if dmarc.len() > 1 || dmarc.iter().any(failed) {
        return Trust::Untrusted {
            why: format!(
                "{} says dmarc={} for this mail",
                header.authserv_id,
                dmarc.join(" and dmarc=")
            ),
        };
    }
    for (method, result, props) in &header.methods {
        if !result.eq_ignore_ascii_case("pass") {
            continue;
        }
        if method.eq_ignore_ascii_case("dmarc")
            && property(props, "header.from").as_deref() == Some(from_domain.as_str())
        {
            return Trust::Trusted {
                how: format!(
                    "dmarc=pass header.from={from_domain} ({})",
                    header.authserv_id
                ),
            };
        }
        if method.eq_ignore_ascii_case("dkim") {
            let signer = property(props, "header.d").or_else(|| property(props, "header.i"));
            if let Some(d) = signer
                && aligned(&d, &from_domain)
            {
                return Trust::Trusted {
                    how: format!("dkim=pass header.d={d} ({})", header.authserv_id),
                };
            }
        }
    }
    let seen: Vec<String> = header
        .methods
        .iter()
        .map(|(m, r, _)| format!("{m}={r}"))
        .collect();
    Trust::Untrusted {
        why: format!(
            "{} says {} for {from_domain}: neither dmarc=pass nor an aligned dkim=pass",
            header.authserv_id,
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ),
    }
}

/// Whether a DKIM signing domain `d` vouches for `from`: the same domain, or a parent
/// of it (relaxed alignment) that is more than a top-level domain.
fn aligned(d: &str, from: &str) -> bool {
    if d.is_empty() || !d.contains('.') {
        return false;
    }
    from == d || from.ends_with(&format!(".{d}"))
}

/// `user@Example.ORG` or `@example.org` or `example.org.` → `example.org`.
fn domain_of(value: &str) -> String {
    let v = value.trim().trim_matches('"');
    let v = v.rsplit_once('@').map_or(v, |(_, d)| d);
    v.trim_end_matches('.').to_ascii_lowercase()
}

/// Parses one header value; `None` when it has no authserv-id.
fn parse(value: &str) -> Option<Results> {
    let cleaned = strip_comments(value);
    let mut parts = split_outside_quotes(&cleaned, ';').into_iter();
    let authserv_id = parts.next()?.split_whitespace().next()?.to_string();
    let mut methods = Vec::new();
    for part in parts {
        let mut tokens = tokens(&part).into_iter();
        let Some(first) = tokens.next() else { continue };
        let Some((method, result)) = first.split_once('=') else {
            continue; // `none`
        };
        let method = method
            .split('/')
            .next()
            .unwrap_or(method)
            .trim()
            .to_string();
        let props = tokens
            .filter_map(|t| {
                let (k, v) = t.split_once('=')?;
                Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            })
            .collect();
        methods.push((method, result.trim().to_string(), props));
    }
    Some(Results {
        authserv_id,
        methods,
    })
}

/// Removes RFC 5322 comments (`(…)`, nested, with `\` escapes), outside quoted strings.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                out.push(' ');
            }
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn split_outside_quotes(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if let Some(last) = parts.last_mut() {
                last.push(c);
            }
            continue;
        }
        if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

/// Whitespace-separated tokens, with `a = b` joined into `a=b`.
fn tokens(part: &str) -> Vec<String> {
    let spaced = part.replace(" =", "=").replace("= ", "=");
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in spaced.chars() {
        if escaped {
            escaped = false;
            current.push(c);
            continue;
        }
        if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_forms_providers_write_are_understood() {
        let accepted = [
            // Gmail
            (
                "mx.google.com;\r\n       dkim=pass header.i=@trusted.test header.s=s1 header.b=abc;\r\n       spf=pass (google.com: domain of a@trusted.test designates 1.2.3.4 as permitted sender) smtp.mailfrom=a@trusted.test;\r\n       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=trusted.test",
                "trusted.test",
            ),
            // Microsoft 365 (no authserv-id of its own)
            (
                "spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=trusted.test; dkim=pass (signature was verified) header.d=trusted.test;dmarc=pass action=none header.from=trusted.test;compauth=pass reason=100",
                "trusted.test",
            ),
            // Fastmail / Cyrus, with a version
            (
                "mx.messagingengine.com 1; dmarc=pass policy.published-domain-policy=none header.from=trusted.test",
                "trusted.test",
            ),
            // dkim only, signed by the parent domain
            (
                "mx.nanoclaw.test; dkim=pass header.d=trusted.test",
                "mail.trusted.test",
            ),
            // quoted and spaced values
            (
                "mx.nanoclaw.test; dmarc = pass header.from = \"Trusted.Test\"",
                "trusted.test",
            ),
        ];
        for (header, domain) in accepted {
            let verdict = judge(&h(&[header]), domain, None);
            assert!(verdict.is_trusted(), "{header}: {verdict:?}");
        }
    }

    #[test]
    fn failures_misalignment_and_missing_headers_are_refused() {
        let refused = [
            (
                "mx.nanoclaw.test; dmarc=fail header.from=trusted.test",
                "trusted.test",
            ),
            (
                "mx.nanoclaw.test; dmarc=none header.from=trusted.test",
                "trusted.test",
            ),
            ("mx.nanoclaw.test; none", "trusted.test"),
            // a pass for another domain
            (
                "mx.nanoclaw.test; dmarc=pass header.from=evil.test",
                "trusted.test",
            ),
            (
                "mx.nanoclaw.test; dkim=pass header.d=evil.test",
                "trusted.test",
            ),
            // a child does not vouch for its parent, nor a suffix that is not a label
            (
                "mx.nanoclaw.test; dkim=pass header.d=mail.trusted.test",
                "trusted.test",
            ),
            (
                "mx.nanoclaw.test; dkim=pass header.d=sted.test",
                "trusted.test",
            ),
            ("mx.nanoclaw.test; dkim=pass header.d=test", "trusted.test"),
            // spf alone aligns nothing
            (
                "mx.nanoclaw.test; spf=pass smtp.mailfrom=trusted.test",
                "trusted.test",
            ),
            // the pass hides in a comment
            (
                "mx.nanoclaw.test; dmarc=fail (dmarc=pass header.from=trusted.test) header.from=trusted.test",
                "trusted.test",
            ),
        ];
        for (header, domain) in refused {
            assert!(!judge(&h(&[header]), domain, None).is_trusted(), "{header}");
        }
        assert!(!judge(&[], "trusted.test", None).is_trusted());
    }

    #[test]
    fn only_the_receiving_servers_header_counts() {
        // The sender forged a pass below the receiving server's own verdict.
        let headers = h(&[
            "mx.nanoclaw.test; dmarc=fail header.from=trusted.test",
            "mx.nanoclaw.test; dmarc=pass header.from=trusted.test",
        ]);
        assert!(!judge(&headers, "trusted.test", None).is_trusted());
        assert!(!judge(&headers, "trusted.test", Some("mx.nanoclaw.test")).is_trusted());
        // With the server named, a forged header of another id above it does not count…
        let headers = h(&[
            "forger.example; dmarc=pass header.from=trusted.test",
            "mx.google.com; dmarc=fail header.from=trusted.test",
        ]);
        assert!(!judge(&headers, "trusted.test", Some("mx.google.com")).is_trusted());
        // …and without its header nothing does.
        let headers = h(&["forger.example; dmarc=pass header.from=trusted.test"]);
        let verdict = judge(&headers, "trusted.test", Some("mx.google.com"));
        assert_eq!(
            verdict,
            Trust::Untrusted {
                why: "no Authentication-Results header from mx.google.com".into()
            }
        );
    }

    #[test]
    fn quoted_pairs_and_contrary_verdicts_cannot_smuggle_a_pass() {
        // An escaped quote inside a quoted local part does not end the quoted string,
        // so the "dmarc=pass" inside it stays part of smtp.mailfrom.
        let smuggled = h(&[
            r#"mx.nanoclaw.test; spf=pass smtp.mailfrom="x\" ; dmarc=pass header.from=trusted.test ; y"@forged.test; dkim=none; dmarc=fail (p=reject) header.from=trusted.test"#,
        ]);
        assert!(!judge(&smuggled, "trusted.test", Some("mx.nanoclaw.test")).is_trusted());
        // Two verdicts in one header, one of them a pass: neither counts.
        let both = h(&[
            "mx.nanoclaw.test; spf=pass smtp.mailfrom=x@forged.test; dmarc=pass header.from=trusted.test; dkim=none; dmarc=fail (p=reject) header.from=trusted.test",
        ]);
        let verdict = judge(&both, "trusted.test", None);
        assert!(
            matches!(&verdict, Trust::Untrusted { why } if why.contains("dmarc=pass and dmarc=fail")),
            "{verdict:?}"
        );
        // A DMARC failure is not undone by an aligned DKIM pass.
        let failed = h(&[
            "mx.nanoclaw.test; dkim=pass header.d=trusted.test; dmarc=fail header.from=trusted.test",
        ]);
        assert!(!judge(&failed, "trusted.test", None).is_trusted());
        // No DMARC policy (none, or Microsoft's bestguesspass) with aligned DKIM still counts.
        let none = h(&[
            "mx.nanoclaw.test; dkim=pass header.d=trusted.test; dmarc=none header.from=trusted.test",
        ]);
        assert!(judge(&none, "trusted.test", None).is_trusted());
    }
}
