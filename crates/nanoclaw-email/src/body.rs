//! What of a mail's text the agent reads: the new part of the body, without the quoted
//! history mail clients append or the sender's signature (SPEC §13.5), and subject
//! lines for replies. Pure.

/// The body without quoted history and signature, trimmed; the whole body when
/// trimming would leave nothing (a mail that is all quote is better read whole).
pub fn new_part(body: &str) -> String {
    let body = body.replace("\r\n", "\n");
    let lines: Vec<&str> = body.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_end();
        // "-- " is the signature separator (RFC 3676); everything after it is signature.
        if trimmed == "--" || line == "-- " || line == "__" {
            break;
        }
        if is_quote_header(trimmed, lines.get(i + 1).copied()) {
            break;
        }
        if trimmed.starts_with('>') {
            i += 1;
            continue;
        }
        kept.push(trimmed);
        i += 1;
    }
    let text = kept.join("\n");
    let text = text.trim();
    if text.is_empty() {
        body.trim().to_string()
    } else {
        collapse_blank_lines(text)
    }
}

/// Where a client starts the quoted original: "On … wrote:" (possibly wrapped over two
/// lines), Outlook's "-----Original Message-----" or its "From: … / Sent: …" block,
/// and forwarded-message separators.
fn is_quote_header(line: &str, next: Option<&str>) -> bool {
    let lower = line.to_ascii_lowercase();
    if lower.starts_with("-----original message-----")
        || lower.starts_with("---------- forwarded message")
        || lower.starts_with("-------- original message")
    {
        return true;
    }
    if lower.starts_with("on ") && lower.ends_with("wrote:") {
        return true;
    }
    if let Some(next) = next
        && lower.starts_with("on ")
        && !lower.ends_with(':')
        && next.trim_end().to_ascii_lowercase().ends_with("wrote:")
        && next.len() < 80
    {
        return true;
    }
    // German, French, Spanish clients.
    for (start, marker) in [
        ("am ", " schrieb "),
        ("le ", " a écrit"),
        ("el ", " escribió"),
    ] {
        if lower.starts_with(start) && lower.ends_with(':') && lower.contains(marker) {
            return true;
        }
    }
    if lower.starts_with("from:")
        && next.is_some_and(|n| {
            let n = n.to_ascii_lowercase();
            n.starts_with("sent:") || n.starts_with("date:")
        })
    {
        return true;
    }
    false
}

fn collapse_blank_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string()
}

/// The subject without any leading `Re:` (or `RE:`, `Re[2]:`, `Aw:`, `Sv:`), repeated.
pub fn base_subject(subject: &str) -> &str {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let prefix = ["re", "aw", "sv", "antw"]
            .iter()
            .find_map(|p| lower.strip_prefix(p).map(|rest| (p.len(), rest)));
        let Some((n, rest)) = prefix else { return s };
        let rest_trim = rest.trim_start();
        let skipped = rest.len() - rest_trim.len();
        // `Re:` or `Re[2]:` or `Re(2):`
        let after = if let Some(r) = rest_trim.strip_prefix(':') {
            Some(r)
        } else if let Some(r) = rest_trim
            .strip_prefix('[')
            .or_else(|| rest_trim.strip_prefix('('))
        {
            r.find([']', ')'])
                .and_then(|close| r[close + 1..].trim_start().strip_prefix(':'))
        } else {
            None
        };
        let Some(after) = after else { return s };
        let consumed = n + skipped + (rest_trim.len() - after.len());
        s = s[consumed..].trim_start();
    }
}

/// The subject of a reply: `Re: {subject}`, never `Re: Re: …`.
pub fn reply_subject(subject: &str) -> String {
    let base = base_subject(subject);
    if base.is_empty() {
        "Re: (no subject)".into()
    } else {
        format!("Re: {base}")
    }
}

/// The subject of a mail that starts a thread: its first non-empty line, cut at 78
/// characters (on a word boundary when there is one).
pub fn first_line_subject(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.chars().count() <= 78 {
        return line.to_string();
    }
    let cut: String = line.chars().take(78).collect();
    match cut.rfind(' ') {
        Some(i) if i > 40 => cut[..i].trim_end().to_string(),
        _ => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_history_and_signatures_are_cut() {
        let gmail = "Sounds good, see you then.\r\n\r\nOn Mon, Jan 5, 2026 at 10:00 AM Andy <andy@nanoclaw.test> wrote:\r\n> Shall we meet at 5?\r\n> \r\n";
        assert_eq!(new_part(gmail), "Sounds good, see you then.");
        let wrapped = "Yes.\n\nOn Mon, Jan 5, 2026 at 10:00 AM Andy Assistant\n<andy@nanoclaw.test> wrote:\n> Shall we?\n";
        assert_eq!(new_part(wrapped), "Yes.");
        let outlook =
            "Fine by me.\n\n-----Original Message-----\nFrom: Andy\nSent: Monday\n\nShall we?";
        assert_eq!(new_part(outlook), "Fine by me.");
        let outlook_block = "Fine.\n\nFrom: Andy <a@b.c>\nSent: Monday, 5 January\nTo: me\n";
        assert_eq!(new_part(outlook_block), "Fine.");
        let signed = "Water the plants please.\n\n-- \nAlice\nSent from my phone";
        assert_eq!(new_part(signed), "Water the plants please.");
        let inline = "> what time?\nfive\n> where?\nhere";
        assert_eq!(new_part(inline), "five\nhere");
        let german = "Ja.\n\nAm 05.01.2026 um 10:00 schrieb Andy <a@b.c>:\n> Treffen?";
        assert_eq!(new_part(german), "Ja.");
        // All quote: read it whole rather than nothing.
        assert_eq!(new_part("> only a quote"), "> only a quote");
        assert_eq!(new_part("a\n\n\n\nb"), "a\n\nb");
    }

    #[test]
    fn reply_subjects_do_not_stack() {
        assert_eq!(reply_subject("Plants"), "Re: Plants");
        assert_eq!(reply_subject("Re: Plants"), "Re: Plants");
        assert_eq!(reply_subject("RE: re: Aw: Plants"), "Re: Plants");
        assert_eq!(reply_subject("Re[2]: Plants"), "Re: Plants");
        assert_eq!(reply_subject("Research"), "Re: Research");
        assert_eq!(reply_subject(""), "Re: (no subject)");
        assert_eq!(base_subject("Re:"), "");
    }

    #[test]
    fn a_new_thread_takes_its_first_line() {
        assert_eq!(
            first_line_subject("\n  Reminder: plants\nmore"),
            "Reminder: plants"
        );
        let long = "word ".repeat(30);
        let subject = first_line_subject(&long);
        assert!(subject.chars().count() <= 78, "{subject}");
        assert!(subject.ends_with("word"));
        let unbroken = "x".repeat(100);
        assert_eq!(first_line_subject(&unbroken).chars().count(), 78);
        assert_eq!(first_line_subject(""), "");
    }
}
