//! The sender allowlist (SPEC §5.2): `~/.config/nanoclaw/sender-allowlist.json`.
//!
//! ```json
//! {"default": {"allow": "*", "mode": "trigger"},
//!  "chats": {"tg:-100123": {"allow": ["42", "43"], "mode": "drop"}},
//!  "logDenied": true}
//! ```
//!
//! Missing file: everyone may trigger. Invalid file: *nobody* may trigger in groups that
//! need a trigger (main still works, it needs none), nothing is dropped (we cannot know
//! what the user meant to drop, and losing messages is worse than storing them), and the
//! reason is logged and shown by `nanoclaw doctor` and `/api/status`.
//!
//! The file is re-read when it changes, so edits apply without a restart.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    Everyone,
    Only(HashSet<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Trigger,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    allow: Allow,
    mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderAllowlist {
    default: Entry,
    chats: HashMap<String, Entry>,
    log_denied: bool,
}

/// The allowlist as currently on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowlistState {
    Missing,
    Valid(SenderAllowlist),
    Invalid { path: PathBuf, reason: String },
}

impl AllowlistState {
    fn entry(&self, chat_jid: &str) -> Option<&Entry> {
        match self {
            AllowlistState::Valid(list) => Some(list.chats.get(chat_jid).unwrap_or(&list.default)),
            _ => None,
        }
    }

    fn allowed(entry: &Entry, sender: &str) -> bool {
        match &entry.allow {
            Allow::Everyone => true,
            Allow::Only(ids) => ids.contains(sender),
        }
    }

    /// `drop` mode: the message of a sender who is not allowed is not even stored.
    pub fn should_drop(&self, chat_jid: &str, sender: &str) -> bool {
        let drop = self
            .entry(chat_jid)
            .is_some_and(|e| e.mode == Mode::Drop && !Self::allowed(e, sender));
        if drop && self.log_denied() {
            tracing::info!(
                chat_jid,
                sender,
                "sender allowlist: message dropped (drop mode)"
            );
        }
        drop
    }

    /// Whether a message from `sender` may trigger the agent in `chat_jid`.
    pub fn may_trigger(&self, chat_jid: &str, sender: &str) -> bool {
        let allowed = match self {
            AllowlistState::Missing => true,
            AllowlistState::Invalid { .. } => false,
            AllowlistState::Valid(_) => self
                .entry(chat_jid)
                .is_some_and(|e| Self::allowed(e, sender)),
        };
        if !allowed && self.log_denied() {
            tracing::info!(
                chat_jid,
                sender,
                "sender allowlist: sender may not trigger the assistant"
            );
        }
        allowed
    }

    fn log_denied(&self) -> bool {
        match self {
            AllowlistState::Valid(list) => list.log_denied,
            _ => true,
        }
    }

    /// One line for `doctor` and `/api/status`.
    pub fn describe(&self) -> String {
        match self {
            AllowlistState::Missing => "no sender allowlist: every sender may trigger".into(),
            AllowlistState::Valid(list) => format!(
                "sender allowlist valid ({} chat-specific entr{})",
                list.chats.len(),
                if list.chats.len() == 1 { "y" } else { "ies" }
            ),
            AllowlistState::Invalid { path, reason } => format!(
                "sender allowlist {} is invalid, so no sender can trigger the assistant outside the main group: {reason}",
                path.display()
            ),
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, AllowlistState::Invalid { .. })
    }
}

/// Reads the allowlist file, re-parsing only when it changed on disk.
pub struct SenderPolicy {
    path: PathBuf,
    cache: Mutex<Option<(Option<FileStamp>, Arc<AllowlistState>)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl SenderPolicy {
    pub fn new(path: PathBuf) -> SenderPolicy {
        SenderPolicy {
            path,
            cache: Mutex::new(None),
        }
    }

    /// The current state; a blocking `stat` (and a read when the file changed).
    pub fn current(&self) -> Arc<AllowlistState> {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_stamp, state)) = cache.as_ref()
            && *cached_stamp == stamp
        {
            return Arc::clone(state);
        }
        let state = Arc::new(load(&self.path));
        if let AllowlistState::Invalid { .. } = *state {
            tracing::error!("{}", state.describe());
        }
        *cache = Some((stamp, Arc::clone(&state)));
        state
    }
}

pub fn load(path: &Path) -> AllowlistState {
    let invalid = |reason: String| AllowlistState::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AllowlistState::Missing,
        Err(e) => return invalid(format!("cannot read it: {e}")),
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return invalid(format!("not valid JSON: {e}")),
    };
    match parse(&value) {
        Ok(list) => AllowlistState::Valid(list),
        Err(reason) => invalid(reason),
    }
}

pub(crate) fn parse(value: &Value) -> Result<SenderAllowlist, String> {
    let obj = value
        .as_object()
        .ok_or("the top level must be a JSON object")?;
    let default = parse_entry(
        obj.get("default").ok_or(
            "`default` is missing; add e.g. \"default\": {\"allow\": \"*\", \"mode\": \"trigger\"}",
        )?,
        "default",
    )?;
    let mut chats = HashMap::new();
    match obj.get("chats") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (jid, entry) in map {
                chats.insert(
                    jid.clone(),
                    parse_entry(entry, &format!("chats[\"{jid}\"]"))?,
                );
            }
        }
        Some(_) => return Err("`chats` must be an object mapping chat JIDs to entries".into()),
    }
    let log_denied = match obj.get("logDenied") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`logDenied` must be true or false".into()),
    };
    Ok(SenderAllowlist {
        default,
        chats,
        log_denied,
    })
}

fn parse_entry(value: &Value, at: &str) -> Result<Entry, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("`{at}` must be an object with `allow` and `mode`"))?;
    let allow = match obj.get("allow") {
        Some(Value::String(s)) if s == "*" => Allow::Everyone,
        Some(Value::Array(items)) => Allow::Only(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(format!("`{at}.allow` must list sender ids as strings")),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(format!(
                "`{at}.allow` must be \"*\" or a list of sender ids"
            ));
        }
    };
    let mode = match obj.get("mode").and_then(Value::as_str) {
        Some("trigger") => Mode::Trigger,
        Some("drop") => Mode::Drop,
        _ => {
            return Err(format!(
                "`{at}.mode` must be \"trigger\" or \"drop\", found {}",
                obj.get("mode")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "nothing".into())
            ));
        }
    };
    Ok(Entry { allow, mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> AllowlistState {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sender-allowlist.json");
        std::fs::write(&path, json).expect("write");
        load(&path)
    }

    #[test]
    fn missing_file_allows_everyone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = load(&dir.path().join("absent.json"));
        assert_eq!(s, AllowlistState::Missing);
        assert!(s.may_trigger("tg:1", "anyone"));
        assert!(!s.should_drop("tg:1", "anyone"));
    }

    #[test]
    fn trigger_and_drop_modes_per_chat() {
        let s = state(
            r#"{"default": {"allow": "*", "mode": "trigger"},
                "chats": {"tg:1": {"allow": ["alice"], "mode": "trigger"},
                          "tg:2": {"allow": ["bob", 7], "mode": "drop"}},
                "logDenied": false}"#,
        );
        assert!(s.may_trigger("tg:1", "alice"));
        assert!(!s.may_trigger("tg:1", "mallory"));
        assert!(
            !s.should_drop("tg:1", "mallory"),
            "trigger mode stores the message"
        );
        assert!(s.should_drop("tg:2", "mallory"));
        assert!(!s.should_drop("tg:2", "bob"));
        assert!(
            !s.should_drop("tg:2", "7"),
            "numeric ids are accepted as strings"
        );
        assert!(
            s.may_trigger("tg:3", "anyone"),
            "default applies to other chats"
        );
    }

    #[test]
    fn invalid_files_fail_closed_for_triggers_and_say_why() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[]", "top level"),
            ("{}", "`default` is missing"),
            (
                r#"{"default": {"allow": "*", "mode": "block"}}"#,
                "default.mode",
            ),
            (
                r#"{"default": {"allow": "everyone", "mode": "drop"}}"#,
                "default.allow",
            ),
            (
                r#"{"default": {"allow": "*", "mode": "drop"}, "chats": {"tg:1": {"allow": [true], "mode": "drop"}}}"#,
                "chats[\"tg:1\"].allow",
            ),
            (
                r#"{"default": {"allow": "*", "mode": "drop"}, "logDenied": "yes"}"#,
                "logDenied",
            ),
        ];
        for (json, needle) in cases {
            let s = state(json);
            assert!(s.is_invalid(), "{json}");
            assert!(!s.may_trigger("tg:1", "anyone"), "{json}");
            assert!(
                !s.should_drop("tg:1", "anyone"),
                "{json}: nothing is dropped"
            );
            let d = s.describe();
            assert!(d.contains(needle), "{json}: {d}");
        }
    }

    #[test]
    fn policy_notices_edits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sender-allowlist.json");
        let policy = SenderPolicy::new(path.clone());
        assert_eq!(*policy.current(), AllowlistState::Missing);
        std::fs::write(&path, "{ broken").expect("write");
        assert!(policy.current().is_invalid());
        std::fs::write(&path, r#"{"default": {"allow": "*", "mode": "trigger"}}"#).expect("write");
        assert!(matches!(*policy.current(), AllowlistState::Valid(_)));
    }
}
