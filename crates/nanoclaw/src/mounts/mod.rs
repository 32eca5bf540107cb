//! What a group's sandbox sees (SPEC §7), decided in this one place for every backend.
//!
//! | | main | other groups |
//! |---|---|---|
//! | project root | `/workspace/project` ro, secrets shadowed | — |
//! | `groups/{folder}` | `/workspace/group` rw | `/workspace/group` rw |
//! | `groups/global` | `/workspace/global` rw | `/workspace/global` ro |
//! | `data/sessions/{folder}/.claude` | `/home/node/.claude` rw | same |
//! | `data/ipc/{folder}` | `/workspace/ipc` rw | same |
//! | validated additional mounts | `/workspace/extra/{name}` | same, ro when `nonMainReadOnly` |

pub mod allowlist;
pub mod mcp;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::layout::{GroupFolder, Layout};
use allowlist::{AdditionalMount, AllowlistFile, Rejection};

/// One bind mount into the sandbox. Later entries may sit inside earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub writable: bool,
}

impl MountEntry {
    fn new(source: PathBuf, target: impl Into<String>, writable: bool) -> MountEntry {
        MountEntry {
            source,
            target: target.into(),
            writable,
        }
    }
}

/// Network policy of a group (`container_config.network`, SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// The public internet only, through the host's egress proxy (the default for
    /// non-main groups): nothing on the host, the LAN or other sandboxes.
    Internet,
    /// What NanoClaw gives every group: the sandbox's own network, NATed outwards (the
    /// default for main).
    Full,
    /// No network at all; only the credential proxy is reachable.
    None,
}

impl NetworkPolicy {
    pub fn name(self) -> &'static str {
        match self {
            NetworkPolicy::Internet => "internet",
            NetworkPolicy::Full => "full",
            NetworkPolicy::None => "none",
        }
    }
}

/// Per-group resource limits (`container_config.limits`), each within bounds; unset
/// ones take the defaults of `sandbox::Limits`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupLimits {
    /// Memory of the whole sandbox, MiB.
    pub memory_mb: Option<u64>,
    /// Processes and threads in the sandbox.
    pub pids: Option<u64>,
    /// Disk the group's folders may use (group folder, sessions, IPC), MiB.
    pub disk_mb: Option<u64>,
}

impl GroupLimits {
    fn check(&self) -> Result<(), String> {
        let within = |name: &str, value: Option<u64>, min: u64, max: u64| match value {
            Some(v) if !(min..=max).contains(&v) => Err(format!(
                "container_config.limits.{name} is {v}; it must be from {min} to {max}"
            )),
            _ => Ok(()),
        };
        within("memoryMb", self.memory_mb, 64, 1 << 20)?;
        within("pids", self.pids, 16, 65_536)?;
        within("diskMb", self.disk_mb, 16, 1 << 30)
    }
}

/// A group's spending ceiling (`container_config.budget`, SPEC §15), in model tokens
/// (input, output and cache reads and writes all count). Unset: the daily default
/// `NANOCLAW_DAILY_TOKEN_BUDGET`, and no per-run ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupBudget {
    /// Tokens per day (in `TZ`).
    pub daily_tokens: Option<u64>,
    /// Tokens per run.
    pub run_tokens: Option<u64>,
}

/// The most a budget may be set to (a trillion tokens: far beyond any real day).
pub const MAX_BUDGET_TOKENS: u64 = 1_000_000_000_000;

impl GroupBudget {
    fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("dailyTokens", self.daily_tokens),
            ("runTokens", self.run_tokens),
        ] {
            if let Some(v) = value
                && !(1..=MAX_BUDGET_TOKENS).contains(&v)
            {
                return Err(format!(
                    "container_config.budget.{name} is {v}; it must be from 1 to {MAX_BUDGET_TOKENS}"
                ));
            }
        }
        Ok(())
    }
}

/// A group's `container_config` JSON, as far as the sandbox is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub additional_mounts: Vec<AdditionalMount>,
    /// `None`: the group's default ([`ContainerConfig::network_for`]).
    pub network: Option<NetworkPolicy>,
    /// Narrows `internet` to these names.
    pub allowed_domains: Option<Vec<crate::egress::DomainPattern>>,
    pub limits: GroupLimits,
    pub budget: GroupBudget,
    /// `webSearch`: offer the API's web search tool (`None`: `NANOCLAW_WEB_SEARCH`).
    pub web_search: Option<bool>,
    /// `mcpServers`: stdio MCP servers by name (SPEC §9.1).
    pub mcp_servers: std::collections::BTreeMap<String, mcp::McpServer>,
    /// `harness`: the loop the sandbox runs (SPEC §9.2).
    pub harness: Harness,
}

/// Which agent loop runs in a group's sandbox (`container_config.harness`, SPEC §9.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Harness {
    /// `nanoclaw`: nanoclaw-agent's own loop.
    #[default]
    NanoClaw,
    /// `claude-code`: Claude Code, driven by nanoclaw-agent.
    ClaudeCode,
}

impl Harness {
    pub fn name(self) -> &'static str {
        match self {
            Harness::NanoClaw => "nanoclaw",
            Harness::ClaudeCode => "claude-code",
        }
    }
}

impl ContainerConfig {
    /// Parses the stored JSON. A config that cannot be understood is an error, not
    /// "no config": guessing could give a group more network or mounts than intended.
    /// Unknown keys are refused for the same reason (SPEC §9.1).
    pub fn parse(raw: Option<&str>) -> Result<ContainerConfig, String> {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty() && *r != "null") else {
            return Ok(ContainerConfig::default());
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            additional_mounts: Option<Vec<AdditionalMount>>,
            #[serde(default)]
            network: Option<String>,
            #[serde(default)]
            allowed_domains: Option<Vec<String>>,
            #[serde(default)]
            limits: Option<GroupLimits>,
            #[serde(default)]
            budget: Option<GroupBudget>,
            #[serde(default)]
            mcp_servers: Option<Value>,
            #[serde(default)]
            web_search: Option<bool>,
            #[serde(default)]
            harness: Option<String>,
            // NanoClaw v1 kept a per-group timeout here; accepted and ignored.
            #[serde(default)]
            #[allow(dead_code)]
            timeout: Option<Value>,
        }
        let parsed: Raw =
            serde_json::from_str(raw).map_err(|e| format!("container_config is not valid: {e}"))?;
        let network = match parsed.network.as_deref() {
            None => None,
            Some("internet") => Some(NetworkPolicy::Internet),
            Some("full") => Some(NetworkPolicy::Full),
            Some("none") => Some(NetworkPolicy::None),
            Some(other) => {
                return Err(format!(
                    "container_config.network is {other:?}; it must be \"internet\", \"full\" or \"none\""
                ));
            }
        };
        let allowed_domains = match parsed.allowed_domains {
            None => None,
            Some(list) => {
                if !matches!(network, None | Some(NetworkPolicy::Internet)) {
                    return Err(
                        "container_config.allowedDomains narrows the \"internet\" network policy; \
                         remove it or set \"network\": \"internet\""
                            .into(),
                    );
                }
                Some(
                    list.iter()
                        .map(|d| crate::egress::DomainPattern::parse(d))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("container_config.{e}"))?,
                )
            }
        };
        let limits = parsed.limits.unwrap_or_default();
        limits.check()?;
        let budget = parsed.budget.unwrap_or_default();
        budget.check()?;
        let mcp_servers = match &parsed.mcp_servers {
            None | Some(Value::Null) => Default::default(),
            Some(raw) => mcp::parse(raw)?,
        };
        let harness = match parsed.harness.as_deref() {
            None | Some("nanoclaw") => Harness::NanoClaw,
            Some("claude-code") => Harness::ClaudeCode,
            Some(other) => {
                return Err(format!(
                    "container_config.harness is {other:?}; it must be \"nanoclaw\" (the default) or \"claude-code\""
                ));
            }
        };
        Ok(ContainerConfig {
            harness,
            additional_mounts: parsed.additional_mounts.unwrap_or_default(),
            network,
            allowed_domains,
            limits,
            budget,
            web_search: parsed.web_search,
            mcp_servers,
        })
    }

    /// The group's network policy: as configured, else `full` for main and `internet`
    /// for everyone else. `allowedDomains` implies `internet`.
    pub fn network_for(&self, is_main: bool) -> NetworkPolicy {
        match (self.network, &self.allowed_domains) {
            (Some(policy), _) => policy,
            (None, Some(_)) => NetworkPolicy::Internet,
            (None, None) if is_main => NetworkPolicy::Full,
            (None, None) => NetworkPolicy::Internet,
        }
    }
}

/// The mounts of one sandbox, and the additional mounts that were refused.
#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    pub mounts: Vec<MountEntry>,
    pub rejected: Vec<Rejection>,
}

pub const PROJECT: &str = "/workspace/project";
pub const GROUP: &str = "/workspace/group";
pub const GLOBAL: &str = "/workspace/global";
pub const IPC: &str = "/workspace/ipc";
pub const SESSIONS: &str = "/home/node/.claude";
pub const EXTRA: &str = "/workspace/extra";

/// Builds the mount table for `folder`. Files that must stay hidden inside main's
/// read-only project view are covered by empty placeholders.
///
/// `config_files` are the allowlist files: hidden if the root contains them, and their
/// folder, like the root itself, can never be an additional mount. `run_dir` is this
/// sandbox's own folder of host sockets (credential proxy, egress), seen at
/// `/run/nanoclaw/`. `all_groups` are every registered group's additional mounts (with
/// whether it is main): a mount inside one that any group may write is refused (see
/// [`writable_by_sandboxes`]).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    layout: &Layout,
    folder: &GroupFolder,
    is_main: bool,
    run_dir: &Path,
    extra: &[AdditionalMount],
    allowlist: &AllowlistFile,
    home: &Path,
    config_files: &[PathBuf],
    all_groups: &[(bool, Vec<AdditionalMount>)],
) -> MountPlan {
    let mut mounts = Vec::new();
    if is_main {
        mounts.push(MountEntry::new(layout.root().to_path_buf(), PROJECT, false));
        for (relative, is_dir) in hidden_in_project(layout, config_files) {
            let placeholder = if is_dir {
                layout.empty_dir()
            } else {
                layout.empty_file()
            };
            mounts.push(MountEntry::new(
                placeholder,
                format!("{PROJECT}/{relative}"),
                false,
            ));
        }
    }
    mounts.push(MountEntry::new(layout.group_dir(folder), GROUP, true));
    mounts.push(MountEntry::new(layout.global_dir(), GLOBAL, is_main));
    mounts.push(MountEntry::new(layout.sessions_dir(folder), SESSIONS, true));
    mounts.push(MountEntry::new(layout.ipc_dir(folder), IPC, true));
    // This sandbox's own sockets: the only way to the model API (and, under
    // `internet`, to the network).
    mounts.push(MountEntry::new(
        run_dir.to_path_buf(),
        crate::proxy::SANDBOX_SOCKET_DIR,
        false,
    ));

    let protected: Vec<PathBuf> = std::iter::once(layout.root().to_path_buf())
        .chain(
            config_files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf)),
        )
        .filter_map(|p| std::fs::canonicalize(&p).ok().or(Some(p)))
        .collect();
    let writable = match allowlist {
        AllowlistFile::Valid(list) => writable_by_sandboxes(list, all_groups, home, &protected),
        _ => Vec::new(),
    };
    let mut rejected = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for request in extra {
        let result = match allowlist {
            AllowlistFile::Valid(list) => list.validate(request, is_main, home, &protected),
            other => Err(Rejection {
                host_path: request.host_path.clone(),
                reason: other.describe(),
            }),
        };
        let result = result.and_then(|v| match writable
            .iter()
            .find(|w| v.host_path != **w && v.host_path.starts_with(w))
        {
            Some(w) => Err(Rejection {
                host_path: request.host_path.clone(),
                reason: format!(
                    "it lies inside {}, which a group's sandboxes may write (a read-write additional mount): \
                     one of them could swap a symlink in between the check and the mount; mount {} itself, \
                     or make that mount read-only",
                    w.display(),
                    w.display()
                ),
            }),
            None => Ok(v),
        });
        match result {
            Ok(v) if names.contains(&v.name) => rejected.push(Rejection {
                host_path: request.host_path.clone(),
                reason: format!("another mount already uses /workspace/extra/{}", v.name),
            }),
            Ok(v) => {
                names.push(v.name.clone());
                mounts.push(MountEntry::new(
                    v.host_path,
                    format!("{EXTRA}/{}", v.name),
                    v.writable,
                ));
            }
            Err(r) => rejected.push(r),
        }
    }
    MountPlan { mounts, rejected }
}

/// The host folders some group's sandboxes may write through a read-write additional
/// mount. A mount is checked (symlinks resolved) and then mounted by path; a sandbox that
/// can write an ancestor of another mount's path could swap in a symlink between the
/// two and get any folder mounted, the allowlist's own included. So no mount may lie
/// strictly inside one of these.
fn writable_by_sandboxes(
    list: &allowlist::MountAllowlist,
    all_groups: &[(bool, Vec<AdditionalMount>)],
    home: &Path,
    protected: &[PathBuf],
) -> Vec<PathBuf> {
    all_groups
        .iter()
        .flat_map(|(is_main, mounts)| {
            mounts
                .iter()
                .filter_map(move |m| list.validate(m, *is_main, home, protected).ok())
        })
        .filter(|v| v.writable)
        .map(|v| v.host_path)
        .collect()
}

/// Paths under the root that main's read-only project view must not show, relative to
/// the root, with whether each is a directory: every top-level `.env*` file (SPEC: `.env`;
/// `.env.local` and friends hold the same secrets), `store/auth/`, `data/http-token`, the
/// sandbox owners' lock files, and the allowlists if the root happens to contain them.
fn hidden_in_project(layout: &Layout, config_files: &[PathBuf]) -> Vec<(String, bool)> {
    let Ok(root) = std::fs::canonicalize(layout.root()) else {
        return Vec::new();
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".env"))
            .map(|e| e.path())
            .collect();
        names.sort();
        candidates.extend(names);
    }
    candidates.push(layout.auth_dir());
    candidates.push(layout.http_token_path());
    // Main could otherwise lock a dead owner's file and keep its leftovers alive.
    candidates.push(layout.sandbox_owners_dir());
    candidates.extend(config_files.iter().cloned());
    let mut hidden: Vec<(String, bool)> = Vec::new();
    for path in candidates {
        // Whatever the entry is (file, folder, symlink), what it leads to is hidden, at
        // the place it really is: a symlinked `.env` hides its target.
        let Ok(resolved) = std::fs::canonicalize(&path) else {
            continue;
        };
        let Ok(relative) = resolved.strip_prefix(&root) else {
            continue; // Outside the root: not in the project view anyway.
        };
        let Some(text) = relative.to_str().filter(|t| !t.is_empty()) else {
            continue;
        };
        let entry = (text.to_string(), resolved.is_dir());
        if !hidden.contains(&entry) {
            hidden.push(entry);
        }
    }
    hidden
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unknown_harness_is_refused_with_the_choices() {
        let err = ContainerConfig::parse(Some(r#"{"harness": "codex"}"#)).expect_err("refused");
        assert!(
            err.contains("harness") && err.contains("\"claude-code\"") && err.contains("codex"),
            "{err}"
        );
        let ok = ContainerConfig::parse(Some(r#"{"harness": "claude-code"}"#)).expect("accepted");
        assert_eq!(ok.harness, Harness::ClaudeCode);
        assert_eq!(
            ContainerConfig::parse(None).expect("default").harness,
            Harness::NanoClaw
        );
    }

    use super::*;

    fn setup() -> (tempfile::TempDir, Layout, GroupFolder) {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(dir.path());
        layout.create().expect("layout");
        layout.load_or_create_http_token().expect("token");
        std::fs::write(dir.path().join(".env"), "ANTHROPIC_API_KEY=x").expect(".env");
        std::fs::write(dir.path().join(".env.local"), "X=y").expect(".env.local");
        let folder = GroupFolder::parse("team").expect("folder");
        layout.create_group_dirs(&folder).expect("group dirs");
        (dir, layout, folder)
    }

    fn targets(plan: &MountPlan) -> Vec<(String, bool)> {
        plan.mounts
            .iter()
            .map(|m| (m.target.clone(), m.writable))
            .collect()
    }

    #[test]
    fn main_gets_the_project_read_only_with_secrets_shadowed() {
        let (_d, layout, folder) = setup();
        std::fs::create_dir_all(layout.sandbox_owners_dir()).expect("owners");
        let none = AllowlistFile::Missing("x".into());
        let p = plan(
            &layout,
            &folder,
            true,
            Path::new("/run-dir"),
            &[],
            &none,
            Path::new("/home/x"),
            &[],
            &[],
        );
        let t: Vec<(String, bool)> = targets(&p);
        let expect = [
            ("/workspace/project", false),
            ("/workspace/project/.env", false),
            ("/workspace/project/.env.local", false),
            ("/workspace/project/store/auth", false),
            ("/workspace/project/data/http-token", false),
            ("/workspace/project/data/sandbox/owners", false),
            ("/workspace/group", true),
            ("/workspace/global", true),
            ("/home/node/.claude", true),
            ("/workspace/ipc", true),
            ("/run/nanoclaw", false),
        ];
        assert_eq!(t, expect.map(|(a, b)| (a.to_string(), b)));
        assert_eq!(p.mounts[1].source, layout.empty_file());
        assert_eq!(p.mounts[3].source, layout.empty_dir());
        assert_eq!(p.mounts[5].source, layout.empty_dir());
    }

    #[test]
    fn a_symlinked_env_hides_its_target_and_env_folders_are_hidden_too() {
        let (d, layout, folder) = setup();
        std::fs::create_dir_all(d.path().join("config")).expect("mkdir");
        std::fs::write(d.path().join("config/secrets.env"), "KEY=x").expect("write");
        std::fs::remove_file(d.path().join(".env")).expect("rm");
        std::os::unix::fs::symlink("config/secrets.env", d.path().join(".env")).expect("symlink");
        std::fs::create_dir_all(d.path().join(".env.d")).expect("mkdir");
        let none = AllowlistFile::Missing("x".into());
        let p = plan(
            &layout,
            &folder,
            true,
            Path::new("/run-dir"),
            &[],
            &none,
            Path::new("/home/x"),
            &[],
            &[],
        );
        let t = targets(&p);
        assert!(
            t.contains(&("/workspace/project/config/secrets.env".into(), false)),
            "{t:?}"
        );
        assert!(
            t.contains(&("/workspace/project/.env.d".into(), false)),
            "{t:?}"
        );
        let env_d = p
            .mounts
            .iter()
            .find(|m| m.target.ends_with(".env.d"))
            .expect("mount");
        assert_eq!(env_d.source, layout.empty_dir());
    }

    #[test]
    fn other_groups_get_only_their_own_folders() {
        let (_d, layout, folder) = setup();
        let none = AllowlistFile::Missing("x".into());
        let p = plan(
            &layout,
            &folder,
            false,
            Path::new("/run-dir"),
            &[],
            &none,
            Path::new("/home/x"),
            &[],
            &[],
        );
        assert_eq!(
            targets(&p),
            [
                ("/workspace/group".to_string(), true),
                ("/workspace/global".to_string(), false),
                ("/home/node/.claude".to_string(), true),
                ("/workspace/ipc".to_string(), true),
                ("/run/nanoclaw".to_string(), false),
            ]
        );
        assert_eq!(p.mounts[0].source, layout.group_dir(&folder));
        assert_eq!(p.mounts[2].source, layout.sessions_dir(&folder));
        assert_eq!(p.mounts[3].source, layout.ipc_dir(&folder));
    }

    /// Main may write ~/projects/shared; team asks for ~/projects/shared/sub. Main's
    /// sandbox could swap `sub` for a symlink between team's check and its mount, so
    /// team's mount is refused; the writable one itself, and unrelated ones, are kept.
    #[test]
    fn a_mount_inside_a_folder_some_sandbox_can_write_is_refused() {
        let (_d, layout, folder) = setup();
        let home = tempfile::tempdir().expect("home");
        for d in ["projects/shared/sub", "projects/other", ".config/nanoclaw"] {
            std::fs::create_dir_all(home.path().join(d)).expect("mkdir");
        }
        let list_path = home.path().join(".config/nanoclaw/mount-allowlist.json");
        std::fs::write(
            &list_path,
            r#"{"allowedRoots": [{"path": "~/projects", "allowReadWrite": true}], "nonMainReadOnly": false}"#,
        )
        .expect("allowlist");
        let list = allowlist::load(&list_path, home.path());
        let mount = |path: &str, readonly: bool| AdditionalMount {
            host_path: path.into(),
            container_path: None,
            readonly: Some(readonly),
        };
        let all = [
            (true, vec![mount("~/projects/shared", false)]),
            (
                false,
                vec![
                    mount("~/projects/shared/sub", true),
                    mount("~/projects/other", true),
                ],
            ),
        ];
        let team = plan(
            &layout,
            &folder,
            false,
            Path::new("/run-dir"),
            &all[1].1,
            &list,
            home.path(),
            &[],
            &all,
        );
        assert_eq!(team.rejected.len(), 1, "{:?}", team.rejected);
        assert!(
            team.rejected[0].reason.contains("may write"),
            "{}",
            team.rejected[0]
        );
        assert!(
            team.mounts
                .iter()
                .any(|m| m.target == "/workspace/extra/other")
        );
        let main = plan(
            &layout,
            &folder,
            true,
            Path::new("/run-dir"),
            &all[0].1,
            &list,
            home.path(),
            &[],
            &all,
        );
        assert!(main.rejected.is_empty(), "{:?}", main.rejected);
    }

    #[test]
    fn additional_mounts_need_a_valid_allowlist() {
        let (_d, layout, folder) = setup();
        let extra = [AdditionalMount {
            host_path: "/tmp".into(),
            container_path: None,
            readonly: None,
        }];
        for list in [
            AllowlistFile::Missing("/nope.json".into()),
            AllowlistFile::Invalid {
                path: "/bad.json".into(),
                reason: "broken".into(),
            },
        ] {
            let p = plan(
                &layout,
                &folder,
                true,
                Path::new("/run-dir"),
                &extra,
                &list,
                Path::new("/home/x"),
                &[],
                &[],
            );
            assert_eq!(p.rejected.len(), 1);
            assert!(
                p.rejected[0].reason.contains("refused"),
                "{}",
                p.rejected[0]
            );
            assert!(p.mounts.iter().all(|m| !m.target.starts_with(EXTRA)));
        }
    }

    #[test]
    fn container_config_parsing() {
        assert_eq!(
            ContainerConfig::parse(None).expect("none"),
            ContainerConfig::default()
        );
        let c = ContainerConfig::parse(Some(
            r#"{"additionalMounts":[{"hostPath":"~/p","readonly":false}],"network":"none","timeout":300000}"#,
        ))
        .expect("valid");
        assert_eq!(c.network, Some(NetworkPolicy::None));
        assert_eq!(c.network_for(false), NetworkPolicy::None);
        assert_eq!(c.additional_mounts[0].readonly, Some(false));
        let defaults = ContainerConfig::default();
        assert_eq!(defaults.network_for(true), NetworkPolicy::Full);
        assert_eq!(defaults.network_for(false), NetworkPolicy::Internet);
        let c = ContainerConfig::parse(Some(
            r#"{"allowedDomains":["example.com","*.github.com"],"limits":{"memoryMb":512,"pids":64,"diskMb":100}}"#,
        ))
        .expect("valid");
        assert_eq!(c.network_for(true), NetworkPolicy::Internet);
        assert_eq!(c.allowed_domains.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.limits.disk_mb, Some(100));
        let c =
            ContainerConfig::parse(Some(r#"{"budget":{"dailyTokens":50000,"runTokens":8000}}"#))
                .expect("valid");
        assert_eq!(
            c.budget,
            GroupBudget {
                daily_tokens: Some(50_000),
                run_tokens: Some(8_000)
            }
        );
        assert_eq!(c.web_search, None);
        let c = ContainerConfig::parse(Some(r#"{"webSearch":false}"#)).expect("valid");
        assert_eq!(c.web_search, Some(false));
        assert!(ContainerConfig::parse(Some(r#"{"webSearch":"no"}"#)).is_err());
        for (bad, needle) in [
            (r#"{"network":"some"}"#, "must be \"internet\""),
            ("not json", "not valid"),
            (r#"{"additionalMounts":"x"}"#, "not valid"),
            (r#"{"mcpservers":{}}"#, "unknown field `mcpservers`"),
            (
                r#"{"network":"full","allowedDomains":["a.com"]}"#,
                "narrows",
            ),
            (r#"{"allowedDomains":["10.0.0.1"]}"#, "allowedDomains"),
            (r#"{"limits":{"pids":1}}"#, "limits.pids is 1"),
            (r#"{"limits":{"disk":1}}"#, "unknown field `disk`"),
            (r#"{"budget":{"dailyTokens":0}}"#, "budget.dailyTokens is 0"),
            (r#"{"budget":{"daily":5}}"#, "unknown field `daily`"),
            (
                r#"{"budget":{"runTokens":-1}}"#,
                "container_config is not valid",
            ),
        ] {
            let e = ContainerConfig::parse(Some(bad)).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
