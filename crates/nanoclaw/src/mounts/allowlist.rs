//! The mount allowlist (SPEC §8): which host folders a group may get as additional
//! mounts, read from `~/.config/nanoclaw/mount-allowlist.json` (never mounted, so no
//! agent can edit it).
//!
//! ```json
//! {"allowedRoots": [{"path": "~/projects", "allowReadWrite": true, "description": "code"}],
//!  "blockedPatterns": ["password"],
//!  "nonMainReadOnly": true}
//! ```

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Always blocked, whatever the file says.
pub const DEFAULT_BLOCKED_PATTERNS: [&str; 17] = [
    ".ssh",
    ".gnupg",
    ".gpg",
    ".aws",
    ".azure",
    ".gcloud",
    ".kube",
    ".docker",
    "credentials",
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "id_rsa",
    "id_ed25519",
    "private_key",
    ".secret",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedRoot {
    /// `~` expanded and symlinks resolved.
    path: PathBuf,
    allow_read_write: bool,
}

/// A loaded, valid allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountAllowlist {
    roots: Vec<AllowedRoot>,
    blocked: Vec<String>,
    non_main_read_only: bool,
}

/// The allowlist file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowlistFile {
    Missing(PathBuf),
    Invalid { path: PathBuf, reason: String },
    Valid(MountAllowlist),
}

impl AllowlistFile {
    pub fn describe(&self) -> String {
        match self {
            AllowlistFile::Missing(p) => {
                format!(
                    "no mount allowlist at {}: additional mounts are refused",
                    p.display()
                )
            }
            AllowlistFile::Invalid { path, reason } => format!(
                "mount allowlist {} is invalid, so additional mounts are refused: {reason}",
                path.display()
            ),
            AllowlistFile::Valid(list) => format!(
                "mount allowlist valid: {} allowed root(s), {} blocked pattern(s), non-main read-only: {}",
                list.roots.len(),
                list.blocked.len(),
                list.non_main_read_only
            ),
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, AllowlistFile::Invalid { .. })
    }
}

/// One entry of a group's `container_config.additionalMounts`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalMount {
    pub host_path: String,
    #[serde(default)]
    pub container_path: Option<String>,
    #[serde(default)]
    pub readonly: Option<bool>,
}

/// An additional mount that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedMount {
    /// Symlinks resolved.
    pub host_path: PathBuf,
    /// Under `/workspace/extra/`.
    pub name: String,
    pub writable: bool,
}

/// Why a mount was refused; logged with the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub host_path: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "additional mount {:?} refused: {}",
            self.host_path, self.reason
        )
    }
}

/// `~` and `~/…` become the home directory.
pub fn expand_tilde(path: &str, home: &Path) -> PathBuf {
    if path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(path)
    }
}

pub fn load(path: &Path, home: &Path) -> AllowlistFile {
    let invalid = |reason: String| AllowlistFile::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return AllowlistFile::Missing(path.to_path_buf());
        }
        Err(e) => return invalid(format!("cannot read it: {e}")),
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return invalid(format!("not valid JSON: {e}")),
    };
    match parse(&value, home) {
        Ok(list) => AllowlistFile::Valid(list),
        Err(reason) => invalid(reason),
    }
}

pub(crate) fn parse(value: &Value, home: &Path) -> Result<MountAllowlist, String> {
    let obj = value
        .as_object()
        .ok_or("the top level must be a JSON object")?;
    let roots_value = obj
        .get("allowedRoots")
        .ok_or("`allowedRoots` is missing; add e.g. \"allowedRoots\": [{\"path\": \"~/projects\", \"allowReadWrite\": false}]")?;
    let roots_array = roots_value
        .as_array()
        .ok_or("`allowedRoots` must be a list")?;
    let mut roots = Vec::new();
    for (i, entry) in roots_array.iter().enumerate() {
        let at = format!("allowedRoots[{i}]");
        let entry = entry
            .as_object()
            .ok_or(format!("`{at}` must be an object"))?;
        let raw = entry
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.trim().is_empty())
            .ok_or(format!("`{at}.path` must be a non-empty string"))?;
        let allow_read_write = match entry.get("allowReadWrite") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(format!("`{at}.allowReadWrite` must be true or false")),
        };
        let expanded = expand_tilde(raw, home);
        if !expanded.is_absolute() {
            return Err(format!(
                "`{at}.path` must be absolute or start with ~/ (found {raw:?})"
            ));
        }
        // A root that does not exist (yet) allows nothing; it is not an error.
        match std::fs::canonicalize(&expanded) {
            Ok(path) => roots.push(AllowedRoot {
                path,
                allow_read_write,
            }),
            Err(e) => tracing::warn!(root = raw, "mount allowlist root ignored: {e}"),
        }
    }
    let mut blocked: Vec<String> = DEFAULT_BLOCKED_PATTERNS
        .iter()
        .map(|s| s.to_string())
        .collect();
    match obj.get("blockedPatterns") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let p = item
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .ok_or("`blockedPatterns` must list non-empty strings")?;
                if !blocked.iter().any(|b| b == p) {
                    blocked.push(p.to_string());
                }
            }
        }
        Some(_) => return Err("`blockedPatterns` must be a list of strings".into()),
    }
    let non_main_read_only = match obj.get("nonMainReadOnly") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`nonMainReadOnly` must be true or false".into()),
    };
    Ok(MountAllowlist {
        roots,
        blocked,
        non_main_read_only,
    })
}

/// The name under `/workspace/extra/`: non-empty, relative, no `..`, and only characters
/// that survive every backend's mount syntax.
fn check_container_path(name: &str) -> Result<String, String> {
    let trimmed = name.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("the container path is empty".into());
    }
    if trimmed.starts_with('/') {
        return Err(format!(
            "the container path {trimmed:?} must be relative (it goes under /workspace/extra/)"
        ));
    }
    if Path::new(trimmed)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "the container path {trimmed:?} may not contain `..` or `.`"
        ));
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ' ')))
    {
        return Err(format!(
            "the container path {trimmed:?} may not contain {c:?}"
        ));
    }
    Ok(trimmed.to_string())
}

impl MountAllowlist {
    /// Checks one requested mount (SPEC §8), resolving symlinks before any check.
    ///
    /// `protected` are folders no additional mount may be, contain, or lie inside (the
    /// nanoclaw root, which holds `.env`, the store and every group; the directory of
    /// the allowlists), resolved like the mount.
    pub fn validate(
        &self,
        mount: &AdditionalMount,
        is_main: bool,
        home: &Path,
        protected: &[PathBuf],
    ) -> Result<ValidatedMount, Rejection> {
        let reject = |reason: String| Rejection {
            host_path: mount.host_path.clone(),
            reason,
        };
        let requested = expand_tilde(mount.host_path.trim(), home);
        if !requested.is_absolute() {
            return Err(reject(
                "the host path must be absolute or start with ~/".into(),
            ));
        }
        let default_name = requested
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = check_container_path(mount.container_path.as_deref().unwrap_or(&default_name))
            .map_err(reject)?;
        let resolved = std::fs::canonicalize(&requested).map_err(|e| {
            reject(format!(
                "the host path does not exist or cannot be resolved ({e})"
            ))
        })?;
        let resolved_text = resolved.to_string_lossy();
        if resolved_text
            .chars()
            .any(|c| c == ',' || c == ':' || c.is_control())
        {
            return Err(reject(format!(
                "the resolved path {resolved_text:?} contains `,`, `:` or a control character, which container runtimes cannot mount safely"
            )));
        }
        if let Some(pattern) = self.blocked.iter().find(|p| {
            resolved_text.contains(p.as_str())
                || resolved
                    .components()
                    .any(|c| c.as_os_str().to_string_lossy().contains(p.as_str()))
        }) {
            return Err(reject(format!(
                "{} matches the blocked pattern {pattern:?}",
                resolved.display()
            )));
        }
        if let Some(p) = protected
            .iter()
            .find(|p| resolved.starts_with(p) || p.starts_with(&resolved))
        {
            return Err(reject(format!(
                "{} overlaps {}, which holds nanoclaw's own data and secrets",
                resolved.display(),
                p.display()
            )));
        }
        let Some(root) = self
            .roots
            .iter()
            .filter(|r| resolved.starts_with(&r.path))
            .max_by_key(|r| r.path.components().count())
        else {
            return Err(reject(format!(
                "{} is not under any allowed root in the mount allowlist",
                resolved.display()
            )));
        };
        let wants_write = mount.readonly == Some(false);
        let writable =
            wants_write && root.allow_read_write && (is_main || !self.non_main_read_only);
        if wants_write && !writable {
            tracing::info!(host_path = %resolved.display(), "additional mount forced read-only by the mount allowlist");
        }
        Ok(ValidatedMount {
            host_path: resolved,
            name,
            writable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fixture {
        _dir: tempfile::TempDir,
        home: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        for d in [
            "projects/app",
            "projects/ro-only/docs",
            "photos",
            ".ssh",
            "elsewhere",
            "projects/.env-stuff",
        ] {
            fs::create_dir_all(home.join(d)).expect("mkdir");
        }
        fs::create_dir_all(home.join("readonly-root/data")).expect("mkdir");
        std::os::unix::fs::symlink(home.join(".ssh"), home.join("projects/sneaky"))
            .expect("symlink");
        Fixture { _dir: dir, home }
    }

    fn allowlist(f: &Fixture, json: &str) -> MountAllowlist {
        let path = f.home.join("allow.json");
        fs::write(&path, json).expect("write");
        match load(&path, &f.home) {
            AllowlistFile::Valid(l) => l,
            other => panic!("expected a valid allowlist: {other:?}"),
        }
    }

    fn mount(host: &str, container: Option<&str>, readonly: Option<bool>) -> AdditionalMount {
        AdditionalMount {
            host_path: host.into(),
            container_path: container.map(str::to_string),
            readonly,
        }
    }

    const LIST: &str = r#"{"allowedRoots": [{"path": "~/projects", "allowReadWrite": true},
                                           {"path": "~/readonly-root", "allowReadWrite": false}],
                          "blockedPatterns": ["photos"], "nonMainReadOnly": true}"#;

    #[test]
    fn accepted_mounts_and_their_access() {
        let f = fixture();
        let list = allowlist(&f, LIST);
        // (mount, is_main, expected name, expected writable)
        let cases = [
            (
                mount("~/projects/app", None, Some(false)),
                true,
                "app",
                true,
            ),
            (
                mount("~/projects/app", None, Some(false)),
                false,
                "app",
                false,
            ),
            (
                mount("~/projects/app", Some("code"), None),
                true,
                "code",
                false,
            ),
            (
                mount("~/readonly-root/data", None, Some(false)),
                true,
                "data",
                false,
            ),
            (
                mount("~/projects/ro-only", Some("a/b"), Some(true)),
                true,
                "a/b",
                false,
            ),
        ];
        for (m, is_main, name, writable) in cases {
            let v = list
                .validate(&m, is_main, &f.home, &[])
                .unwrap_or_else(|e| panic!("{m:?}: {e}"));
            assert_eq!(
                (v.name.as_str(), v.writable),
                (name, writable),
                "{m:?} main={is_main}"
            );
            assert!(v.host_path.is_absolute());
        }
        let relaxed = allowlist(
            &f,
            r#"{"allowedRoots": [{"path": "~/projects", "allowReadWrite": true}], "nonMainReadOnly": false}"#,
        );
        let v = relaxed
            .validate(
                &mount("~/projects/app", None, Some(false)),
                false,
                &f.home,
                &[],
            )
            .expect("valid");
        assert!(
            v.writable,
            "non-main may write when nonMainReadOnly is false"
        );
    }

    #[test]
    fn rejected_mounts_say_why() {
        let f = fixture();
        let list = allowlist(&f, LIST);
        let cases = [
            (mount("~/projects/sneaky", None, None), ".ssh"),
            (mount("~/.ssh", None, None), ".ssh"),
            (mount("~/photos", None, None), "photos"),
            (mount("~/projects/.env-stuff", None, None), ".env"),
            (
                mount("~/elsewhere", None, None),
                "not under any allowed root",
            ),
            (mount("~/projects/missing", None, None), "does not exist"),
            (mount("~/projects/app", Some("../escape"), None), "`..`"),
            (mount("~/projects/app", Some("/etc"), None), "relative"),
            (mount("~/projects/app", Some(""), None), "empty"),
            (
                mount("~/projects/app", Some("a:b"), None),
                "may not contain ':'",
            ),
            (mount("relative/path", None, None), "absolute"),
        ];
        for (m, needle) in cases {
            let e = list
                .validate(&m, true, &f.home, &[])
                .expect_err(&m.host_path)
                .to_string();
            assert!(e.contains(needle), "{m:?}: {e}");
        }
    }

    #[test]
    fn nanoclaw_s_own_folders_cannot_be_mounted_whole_or_in_part() {
        let f = fixture();
        fs::create_dir_all(f.home.join("projects/nanoclaw/groups/team")).expect("mkdir");
        let list = allowlist(&f, LIST);
        let root = fs::canonicalize(f.home.join("projects/nanoclaw")).expect("root");
        let protected = [root];
        for host in [
            "~/projects",
            "~/projects/nanoclaw",
            "~/projects/nanoclaw/groups/team",
        ] {
            let e = list
                .validate(&mount(host, Some("x"), None), true, &f.home, &protected)
                .expect_err(host)
                .to_string();
            assert!(e.contains("overlaps"), "{host}: {e}");
        }
        assert!(
            list.validate(
                &mount("~/projects/app", None, None),
                true,
                &f.home,
                &protected
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_or_invalid_files_refuse_everything_and_say_why() {
        let f = fixture();
        assert!(matches!(
            load(&f.home.join("nope.json"), &f.home),
            AllowlistFile::Missing(_)
        ));
        let cases = [
            ("not json", "not valid JSON"),
            ("{}", "`allowedRoots` is missing"),
            (r#"{"allowedRoots": {}}"#, "must be a list"),
            (r#"{"allowedRoots": [{"path": ""}]}"#, "non-empty string"),
            (r#"{"allowedRoots": [{"path": "relative"}]}"#, "absolute"),
            (
                r#"{"allowedRoots": [], "blockedPatterns": "x"}"#,
                "blockedPatterns",
            ),
            (
                r#"{"allowedRoots": [], "nonMainReadOnly": "no"}"#,
                "nonMainReadOnly",
            ),
            (
                r#"{"allowedRoots": [{"path": "~/p", "allowReadWrite": "yes"}]}"#,
                "allowReadWrite",
            ),
        ];
        for (json, needle) in cases {
            let path = f.home.join("bad.json");
            fs::write(&path, json).expect("write");
            let state = load(&path, &f.home);
            assert!(state.is_invalid(), "{json}");
            assert!(
                state.describe().contains(needle),
                "{json}: {}",
                state.describe()
            );
        }
    }

    #[test]
    fn default_patterns_are_always_merged() {
        let f = fixture();
        let list = allowlist(&f, r#"{"allowedRoots": [], "blockedPatterns": ["mine"]}"#);
        for p in DEFAULT_BLOCKED_PATTERNS {
            assert!(list.blocked.iter().any(|b| b == p), "{p}");
        }
        assert!(list.blocked.iter().any(|b| b == "mine"));
        assert!(
            list.non_main_read_only,
            "read-only for non-main is the default"
        );
    }
}
