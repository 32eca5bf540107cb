//! Splitting long replies for platforms with a message size limit: at a paragraph
//! break if one is near, else a line break, else a space; a word is cut only when it is
//! longer than the limit, and never inside a character (a UTF-8 sequence or a UTF-16
//! surrogate pair).

/// How a platform measures text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// Unicode scalar values.
    Chars,
    /// UTF-16 code units (Telegram, JavaScript-based platforms).
    Utf16,
    Bytes,
}

impl Units {
    fn of(self, c: char) -> usize {
        match self {
            Units::Chars => 1,
            Units::Utf16 => c.len_utf16(),
            Units::Bytes => c.len_utf8(),
        }
    }

    pub fn len(self, s: &str) -> usize {
        s.chars().map(|c| self.of(c)).sum()
    }
}

/// A human size: `1.5 MB`, `12 KB`.
pub fn human_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

/// Whether `text` starts with `word` (ASCII case ignored) followed by something that
/// cannot continue a word: `@Andy,` does, `@Andyman` does not.
pub fn starts_with_word(text: &str, word: &str) -> bool {
    text.get(..word.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(word))
        && text[word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
}

/// `content` starting with `trigger`: a message that addressed the bot (a mention, a
/// reply) becomes the group's trigger, so the trigger rule applies unchanged.
pub fn with_trigger(content: &str, trigger: &str) -> String {
    if starts_with_word(content, trigger) {
        content.to_string()
    } else {
        format!("{trigger} {content}").trim_end().to_string()
    }
}

/// Splits `text` into pieces of at most `max` units each, trimming whitespace at the
/// cuts. Text within the limit comes back as one piece.
pub fn split(text: &str, max: usize, units: Units) -> Vec<String> {
    let max = max.max(1);
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while units.len(rest) > max {
        // The longest prefix within the limit, as a byte index.
        let mut fit = 0;
        let mut used = 0;
        for (i, c) in rest.char_indices() {
            let n = units.of(c);
            if used + n > max {
                break;
            }
            used += n;
            fit = i + c.len_utf8();
        }
        if fit == 0 {
            // One character wider than the limit: send it alone rather than loop.
            fit = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let window = &rest[..fit];
        // Prefer a break in the second half of the window, so pieces stay substantial.
        let half = window.len() / 2;
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&at| at >= half && at > 0))
            .unwrap_or(fit);
        let (head, tail) = rest.split_at(cut);
        let head = head.trim_end();
        if !head.is_empty() {
            pieces.push(head.to_string());
        }
        rest = tail.trim_start();
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece fits (but a single character wider than the limit), and no
    /// character other than whitespace at a cut is lost or moved. The first two bytes
    /// pick the limit and the units.
    #[test]
    fn fuzz_split_keeps_every_character_within_the_limit() {
        nanoclaw_fuzz::fuzz(
            "text_split",
            nanoclaw_fuzz::Shape::Bytes,
            &[" ", "\n", "\n\n", "𝄞", "é", "\u{200d}", "\t"],
            |input| {
                let (head, rest) = input.split_at(input.len().min(2));
                let max = head.iter().fold(0usize, |a, b| a * 256 + *b as usize) % 300;
                let units = if head.first().is_some_and(|b| b & 1 == 1) {
                    Units::Utf16
                } else {
                    Units::Chars
                };
                let text = String::from_utf8_lossy(rest);
                let pieces = split(&text, max, units);
                assert!(!pieces.is_empty());
                for p in &pieces {
                    assert!(
                        units.len(p) <= max.max(1) || p.chars().count() == 1,
                        "{p:?} is over {max}"
                    );
                }
                let kept: String = pieces
                    .concat()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let given: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                assert_eq!(kept, given);
            },
        );
    }

    #[test]
    fn triggers_are_whole_words() {
        assert_eq!(with_trigger("@andy hi", "@Andy"), "@andy hi");
        assert_eq!(with_trigger("@Andyman hi", "@Andy"), "@Andy @Andyman hi");
        assert_eq!(with_trigger("", "@Andy"), "@Andy");
        assert!(starts_with_word("@Andy, hi", "@Andy"));
        assert!(!starts_with_word("@An", "@Andy"));
        assert!(!starts_with_word("é@Andy", "@Andy"));
    }

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split("hello", 10, Units::Chars), ["hello"]);
        assert_eq!(split("", 10, Units::Chars), [""]);
    }

    #[test]
    fn cuts_at_words_and_keeps_every_word() {
        let text = "alpha beta gamma delta epsilon zeta eta theta";
        let pieces = split(text, 12, Units::Chars);
        for p in &pieces {
            assert!(Units::Chars.len(p) <= 12, "{p:?}");
        }
        assert_eq!(pieces.join(" "), text);
        assert!(
            pieces
                .iter()
                .all(|p| !p.starts_with(' ') && !p.ends_with(' '))
        );
    }

    #[test]
    fn prefers_paragraphs_then_lines() {
        let text = format!("{}\n\n{}", "a ".repeat(30).trim(), "b ".repeat(30).trim());
        let pieces = split(&text, 100, Units::Chars);
        assert_eq!(pieces.len(), 2);
        assert!(pieces[0].chars().all(|c| c == 'a' || c == ' '));
    }

    #[test]
    fn never_splits_a_character() {
        // 😀 is 2 UTF-16 units and 4 UTF-8 bytes.
        let text = "😀".repeat(10);
        for (units, max) in [(Units::Utf16, 5), (Units::Bytes, 7), (Units::Chars, 3)] {
            let pieces = split(&text, max, units);
            assert_eq!(pieces.concat(), text, "{units:?}");
            for p in &pieces {
                assert!(units.len(p) <= max, "{units:?} {p:?}");
            }
        }
        // A long word is cut, at a character boundary.
        let word = "é".repeat(25);
        let pieces = split(&word, 10, Units::Chars);
        assert_eq!(pieces.concat(), word);
        assert_eq!(pieces.len(), 3);
    }

    #[test]
    fn telegram_sized_reply() {
        let text = "word ".repeat(2000);
        let pieces = split(&text, 4096, Units::Utf16);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| Units::Utf16.len(p) <= 4096));
        assert_eq!(pieces.join(" "), text.trim());
    }
}
