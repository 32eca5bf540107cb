//! A small, strict `.env` parser.
//!
//! Supports what people actually write: `KEY=value`, blank lines, `# comments`, an
//! `export ` prefix, `"double quoted"` values with `\n \t \" \\` escapes, `'single quoted'`
//! literal values and unquoted values with a trailing ` # comment`. Anything else is an
//! error naming the line, because silently ignoring a typo in a secrets file leads to
//! hours of "why is my key not used".

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(".env line {line}: {problem}")]
pub struct DotenvError {
    pub line: usize,
    pub problem: String,
}

/// A parsed `.env`: key → (value, line number). Later assignments win.
pub type DotenvEntries = BTreeMap<String, (String, usize)>;

pub fn parse(text: &str) -> Result<DotenvEntries, DotenvError> {
    let mut entries = DotenvEntries::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |problem: String| DotenvError {
            line: line_no,
            problem,
        };
        let line = raw_line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map(str::trim_start)
            .unwrap_or(line);
        // The line itself is never quoted: it may well be a pasted secret.
        let Some((key, rest)) = line.split_once('=') else {
            return Err(err("expected KEY=value (this line has no `=`)".to_string()));
        };
        let key = key.trim_end();
        if !is_valid_key(key) {
            return Err(err(format!(
                "`{}` is not a valid variable name (use letters, digits and `_`, not starting with a digit)",
                shorten(key)
            )));
        }
        let value = parse_value(rest.trim_start()).map_err(err)?;
        entries.insert(key.to_string(), (value, line_no));
    }
    Ok(entries)
}

/// The variable a line assigns (`KEY=…` or `export KEY=…`), if it is an assignment.
pub fn key_of(raw_line: &str) -> Option<&str> {
    let line = raw_line.trim_start_matches('\u{feff}').trim();
    if line.starts_with('#') {
        return None;
    }
    let line = line
        .strip_prefix("export")
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(str::trim_start)
        .unwrap_or(line);
    let key = line.split_once('=')?.0.trim_end();
    is_valid_key(key).then_some(key)
}

pub(crate) fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(rest: &str) -> Result<String, String> {
    if let Some(body) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    expect_only_comment(&body[i + 1..])?;
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                other => value.push(other),
            }
        }
        Err("the double-quoted value has no closing `\"`".to_string())
    } else if let Some(body) = rest.strip_prefix('\'') {
        match body.find('\'') {
            Some(end) => {
                expect_only_comment(&body[end + 1..])?;
                Ok(body[..end].to_string())
            }
            None => Err("the single-quoted value has no closing `'`".to_string()),
        }
    } else {
        // Unquoted: a `#` starts a comment only after whitespace, so `pa#ss` stays intact.
        let end = rest
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && rest[..i].ends_with(char::is_whitespace))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        Ok(rest[..end].trim_end().to_string())
    }
}

fn expect_only_comment(after_quote: &str) -> Result<(), String> {
    let tail = after_quote.trim_start();
    if tail.is_empty() || tail.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote".to_string())
    }
}

/// Error messages quote the offending text, but never a whole (possibly secret) line.
fn shorten(s: &str) -> String {
    const MAX: usize = 24;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, key: &str) -> Option<String> {
        parse(text)
            .expect("parses")
            .get(key)
            .map(|(v, _)| v.clone())
    }

    #[test]
    fn accepts_the_common_forms() {
        let text = "\
# a comment
ASSISTANT_NAME=Bob

export TZ=Europe/Berlin
QUOTED=\"two words\" # trailing comment
SINGLE='raw \\n stays'
ESCAPES=\"line1\\nline2 \\\"q\\\"\"
HASH=pa#ss
SPACED = value with spaces   # comment
EMPTY=
";
        assert_eq!(value(text, "ASSISTANT_NAME").as_deref(), Some("Bob"));
        assert_eq!(value(text, "TZ").as_deref(), Some("Europe/Berlin"));
        assert_eq!(value(text, "QUOTED").as_deref(), Some("two words"));
        assert_eq!(value(text, "SINGLE").as_deref(), Some("raw \\n stays"));
        assert_eq!(
            value(text, "ESCAPES").as_deref(),
            Some("line1\nline2 \"q\"")
        );
        assert_eq!(value(text, "HASH").as_deref(), Some("pa#ss"));
        assert_eq!(value(text, "SPACED").as_deref(), Some("value with spaces"));
        assert_eq!(value(text, "EMPTY").as_deref(), Some(""));
    }

    #[test]
    fn later_assignments_win_and_lines_are_recorded() {
        let entries = parse("A=1\nA=2\n").expect("parses");
        assert_eq!(entries.get("A"), Some(&("2".to_string(), 2)));
    }

    #[test]
    fn exported_name_is_not_mistaken_for_the_export_keyword() {
        assert_eq!(value("exporter=1", "exporter").as_deref(), Some("1"));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("A=1\njust words\n", 2, "expected KEY=value"),
            ("1BAD=x", 1, "not a valid variable name"),
            ("A=\"open", 1, "no closing"),
            ("A='open", 1, "no closing"),
            ("A=\"x\" y", 1, "after the closing quote"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle}"
            );
        }
    }

    #[test]
    fn errors_do_not_echo_long_secret_lines() {
        let secret = "sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz";
        let e = parse(secret).expect_err("no equals sign");
        assert!(!e.to_string().contains(secret));
    }
}
