//! Trigger matching (SPEC §5.3): the group's trigger (default `@{ASSISTANT_NAME}`) at the
//! start of the trimmed message, case-insensitive, and not followed by a word character.
//!
//! NanoClaw used `^trigger\b`. For names ending in a letter or digit that is the same
//! rule; for a name ending in punctuation (`@A.I.`) `\b` would demand a letter right
//! after it, so `@A.I. hi` would never trigger. "Not followed by a word character" is
//! what users mean in both cases.

use regex::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub struct Trigger {
    prefix: Option<Regex>,
}

impl Trigger {
    /// `trigger` is literal text (regex metacharacters in a name are escaped); an empty
    /// trigger falls back to `default`.
    pub fn new(trigger: &str, default: &str) -> Trigger {
        let text = match trigger.trim() {
            "" => default.trim(),
            t => t,
        };
        // An escaped literal always compiles; `None` (never matches) is the safe side.
        let prefix = RegexBuilder::new(&format!("^{}", regex::escape(text)))
            .case_insensitive(true)
            .build()
            .ok();
        Trigger { prefix }
    }

    pub fn matches(&self, content: &str) -> bool {
        let content = content.trim();
        let Some(m) = self.prefix.as_ref().and_then(|p| p.find(content)) else {
            return false;
        };
        !content[m.end()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_rules() {
        let t = Trigger::new("@Andy", "@Andy");
        let cases = [
            ("@Andy what's up", true),
            ("@andy hi", true),
            ("@ANDY", true),
            ("   @Andy, hi", true),
            ("@Andy's idea", true),
            ("hey @Andy", false),
            ("@Andyman hi", false),
            ("@Andy_x", false),
            ("@Andyé", false),
            ("Andy hi", false),
            ("", false),
        ];
        for (text, want) in cases {
            assert_eq!(t.matches(text), want, "{text:?}");
        }
    }

    #[test]
    fn names_with_regex_metacharacters_are_literal() {
        let t = Trigger::new("@A.I+", "@Andy");
        assert!(t.matches("@a.i+ hi"));
        assert!(t.matches("@A.I+"));
        assert!(!t.matches("@AxI+ hi"), ". is not a wildcard");
        assert!(!t.matches("@A.II hi"), "+ is not a repetition");
        assert!(!t.matches("@A.I+x"));
        let t = Trigger::new("@Dr. Who", "@Andy");
        assert!(t.matches("@dr. who are you"));
        assert!(!t.matches("@drx who"));
    }

    #[test]
    fn unicode_names_fold_case() {
        let t = Trigger::new("@Ålfred", "@Andy");
        assert!(t.matches("@ålfred hej"));
    }

    #[test]
    fn empty_trigger_uses_the_default() {
        let t = Trigger::new("  ", "@Andy");
        assert!(t.matches("@Andy hello"));
    }
}
