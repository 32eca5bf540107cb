//! Sandboxes (SPEC §7): the primary security boundary. A [`SandboxSpec`] says exactly
//! what one sandbox gets (mounts, environment, network, limits, identity); a
//! [`SandboxBackend`] turns it into a process: `bwrap` (bubblewrap, no image) or an OCI
//! CLI (`podman`, `docker`; one implementation, the binary being the difference).
//!
//! Specs for a group are built in one place, [`prepare`] then [`group_spec`], so agent
//! runs and `nanoclaw sandbox exec` are identical; [`services::RunServices`] is what the
//! host serves each sandbox (its proxy sockets).

pub mod bwrap;
pub mod cgroup;
pub mod claude_code;
pub mod disk;
pub mod image;
pub mod oci;
pub mod orphans;
pub mod runner;
pub(crate) mod seccomp;
pub mod services;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::config::{Config, RuntimeKind};
use crate::layout::{GroupFolder, Layout};
use crate::mounts::{self, ContainerConfig, GroupLimits, MountEntry, MountPlan, NetworkPolicy};
use crate::store::RegisteredGroup;

/// The uid/gid agents run as inside every sandbox (`HOME=/home/node`).
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;
/// Where the agent binary is found inside a bubblewrap sandbox.
pub const AGENT_DIR_IN_SANDBOX: &str = "/opt/nanoclaw/bin";
const SANDBOX_PATH: &str =
    "/opt/nanoclaw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a sandbox's uid 1000 is on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The daemon is an ordinary user: uid 1000 inside is that user outside (a user
    /// namespace), so the sandbox has exactly the user's access to what is mounted.
    SameAsDaemon,
    /// The daemon is root: uid and gid 1000 inside are this group's own host id, from
    /// nanoclaw's range, mapped by a user namespace of the sandbox's own. No account
    /// and no other group has it, so no other process on the host can read or write
    /// the group's folders (see `Layout::share_group_with_sandbox_user`).
    Mapped { uid: u32, gid: u32 },
    /// The daemon is root and the backend cannot map ids per container (docker): every
    /// sandbox is the real uid 1000. `nanoclaw doctor` warns.
    Shared { uid: u32, gid: u32 },
}

impl Identity {
    pub fn daemon_is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// The identity of `folder`'s sandboxes on backend `kind`; `allocate` returns the
    /// folder's stored host id (`Store::sandbox_host_id`) and is only called as root.
    pub fn for_group(
        kind: RuntimeKind,
        folder: &GroupFolder,
        allocate: impl FnOnce(&str) -> Result<u32, String>,
    ) -> Result<Identity, String> {
        if !Self::daemon_is_root() {
            return Ok(Identity::SameAsDaemon);
        }
        if kind == RuntimeKind::Docker {
            return Ok(Identity::Shared {
                uid: SANDBOX_UID,
                gid: SANDBOX_GID,
            });
        }
        let id = allocate(folder.as_str())?;
        Ok(Identity::Mapped { uid: id, gid: id })
    }

    /// The owner files written for the sandbox should get, if it must be changed.
    pub fn owner(self) -> Option<(u32, u32)> {
        match self {
            Identity::SameAsDaemon => None,
            Identity::Mapped { uid, gid } | Identity::Shared { uid, gid } => Some((uid, gid)),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Identity::SameAsDaemon => "the daemon's own user (user namespace)".into(),
            Identity::Mapped { uid, .. } => format!("host uid {uid}, this group's own"),
            Identity::Shared { uid, .. } => format!("host uid {uid}, shared by every group"),
        }
    }
}

/// An id no group is given, for test sandboxes (`probe`).
pub const PROBE_ID: u32 = 4_294_000_000;

/// The host ids of group folders (root only), from the store, remembered once read.
#[derive(Clone)]
pub struct SandboxIds {
    db: PathBuf,
    assistant_name: String,
    base: u32,
    known: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl SandboxIds {
    pub fn new(config: &Config) -> SandboxIds {
        SandboxIds {
            db: Layout::new(&config.root).db_path(),
            assistant_name: config.assistant_name.clone(),
            base: config.sandbox_id_base,
            known: Arc::default(),
        }
    }

    /// The registered groups (blocking: SQLite).
    pub fn registered_groups(&self) -> Result<Vec<RegisteredGroup>, String> {
        crate::store::Store::open(&self.db, &self.assistant_name)
            .and_then(|s| s.registered_groups())
            .map_err(|e| format!("cannot read the registered groups: {e}"))
    }

    /// `folder`'s host id, allocated on first use (blocking: SQLite).
    pub fn host_id(&self, folder: &str) -> Result<u32, String> {
        let key = folder.to_ascii_lowercase();
        if let Some(id) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*id);
        }
        let store = crate::store::Store::open(&self.db, &self.assistant_name)
            .map_err(|e| format!("cannot read the sandbox ids: {e}"))?;
        let id = store
            .sandbox_host_id(folder, self.base)
            .map_err(|e| format!("cannot allocate a sandbox id: {e}"))?;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, id);
        Ok(id)
    }
}

/// Resource limits of one sandbox, applied as far as each backend can (see
/// `nanoclaw doctor` for which mechanism this host has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole sandbox (cgroup), and each process (`RLIMIT_DATA`).
    pub memory_bytes: u64,
    /// Processes and threads: a pids cgroup, and `RLIMIT_NPROC` in the sandbox's own
    /// user namespace.
    pub pids: u64,
    pub open_files: u64,
    /// Size of the `/tmp` tmpfs (memory, so it also counts against `memory_bytes`).
    pub tmp_bytes: u64,
    /// Size of the `/home/node` tmpfs.
    pub home_bytes: u64,
    /// Disk the group's folders may use (watched during runs), and the largest file
    /// (`RLIMIT_FSIZE`).
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::for_group(&GroupLimits::default())
    }
}

impl Limits {
    pub const DEFAULT_MEMORY_MB: u64 = 4096;
    pub const DEFAULT_PIDS: u64 = 1024;
    pub const DEFAULT_DISK_MB: u64 = 4096;

    /// The defaults, with a group's `container_config.limits` applied.
    pub fn for_group(group: &GroupLimits) -> Limits {
        let memory_bytes = group.memory_mb.unwrap_or(Self::DEFAULT_MEMORY_MB) << 20;
        Limits {
            memory_bytes,
            pids: group.pids.unwrap_or(Self::DEFAULT_PIDS),
            open_files: 4096,
            tmp_bytes: memory_bytes / 4,
            home_bytes: memory_bytes / 8,
            disk_bytes: group.disk_mb.unwrap_or(Self::DEFAULT_DISK_MB) << 20,
        }
    }

    pub fn describe(&self) -> String {
        let mib = |b: u64| b >> 20;
        format!(
            "memory {} MiB, {} processes, /tmp {} MiB, home {} MiB, disk {} MiB, {} open files",
            mib(self.memory_bytes),
            self.pids,
            mib(self.tmp_bytes),
            mib(self.home_bytes),
            mib(self.disk_bytes),
            self.open_files
        )
    }
}

impl SandboxSpec {
    /// The command the backend starts: `command`, behind `nanoclaw-agent sandbox-init`
    /// (`agent`: its path in the sandbox)
    /// when something must be set up from inside (the egress bridge under `internet`;
    /// `nproc`, a process limit only the sandbox's own user namespace can scope).
    pub fn command_with_init(&self, agent: &str, nproc: Option<u64>) -> Vec<String> {
        let egress = self.network == NetworkPolicy::Internet;
        if !egress && nproc.is_none() {
            return self.command.clone();
        }
        let mut command: Vec<String> = vec![agent.into(), "sandbox-init".into()];
        if let Some(n) = nproc {
            command.extend(["--nproc".into(), n.to_string()]);
        }
        if egress {
            command.push("--egress".into());
        }
        command.push("--".into());
        command.extend(self.command.iter().cloned());
        command
    }
}

/// Everything one sandbox gets.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// `nanoclaw-{folder}-{millis}`.
    pub name: String,
    pub mounts: Vec<MountEntry>,
    /// The complete environment: nothing else is inherited.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub command: Vec<String>,
    pub network: NetworkPolicy,
    pub limits: Limits,
    pub identity: Identity,
    /// Attach a terminal (interactive `sandbox exec`).
    pub tty: bool,
    /// Identifies this daemon's sandboxes, for orphan cleanup.
    pub root_label: String,
    pub group_folder: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{backend} cannot be used: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

#[async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// The process that runs `spec.command` in the sandbox: its stdin, stdout and stderr
    /// are the sandboxed command's, its exit status the command's.
    async fn command(&self, spec: &SandboxSpec) -> Result<SandboxCommand, SandboxError>;

    /// How this backend enforces isolation on this host (for `nanoclaw doctor`).
    fn mechanisms(&self) -> Vec<String>;

    /// Stops the sandbox `name` (after its process was killed, or to be sure).
    async fn stop(&self, name: &str);

    /// Stops sandboxes of this root left behind by a crashed daemon; returns how many.
    async fn remove_orphans(&self, root_label: &str) -> usize;

    /// Whether this backend works here; `Err` says why not and what to do.
    async fn probe(&self) -> Result<String, String>;
}

/// Work a backend must do once the sandbox process exists (e.g. connect its network).
#[async_trait]
pub(crate) trait AfterSpawn: Send {
    /// Returns a helper process that lives as long as the sandbox, and a descriptor to
    /// hold while it should (the helper exits when it closes, even if this process dies).
    async fn start(
        self: Box<Self>,
    ) -> Result<(tokio::process::Child, Option<OwnedFd>), SandboxError>;
}

/// A sandbox ready to start: set stdio and `kill_on_drop` on `command`, then `spawn`.
pub struct SandboxCommand {
    pub command: tokio::process::Command,
    after_spawn: Option<Box<dyn AfterSpawn>>,
    cgroup: Option<cgroup::SandboxCgroup>,
}

impl SandboxCommand {
    pub(crate) fn new(
        command: tokio::process::Command,
        after_spawn: Option<Box<dyn AfterSpawn>>,
    ) -> SandboxCommand {
        SandboxCommand {
            command,
            after_spawn,
            cgroup: None,
        }
    }

    /// The cgroup the sandbox process joins before it starts; kept with the sandbox.
    pub(crate) fn with_cgroup(mut self, cgroup: Option<cgroup::SandboxCgroup>) -> Self {
        self.cgroup = cgroup;
        self
    }

    /// Starts the sandbox (and whatever it needs alongside).
    pub async fn spawn(self) -> Result<SandboxChild, SandboxError> {
        let SandboxCommand {
            mut command,
            after_spawn,
            cgroup,
        } = self;
        let mut child = command
            .spawn()
            .map_err(|e| SandboxError::Invalid(format!("cannot start the sandbox: {e}")))?;
        // Closes this side's copies of descriptors meant for the child only.
        drop(command);
        let helper = match after_spawn {
            Some(setup) => match setup.start().await {
                Ok(helper) => Some(helper),
                Err(e) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(SandboxChild {
            child,
            _helper: helper,
            cgroup,
        })
    }
}

/// A running sandbox. Dropping it kills helpers and removes its cgroup; the sandbox
/// process itself is killed on drop if its command asked for `kill_on_drop`.
pub struct SandboxChild {
    pub child: tokio::process::Child,
    _helper: Option<(tokio::process::Child, Option<OwnedFd>)>,
    cgroup: Option<cgroup::SandboxCgroup>,
}

impl SandboxChild {
    /// Whether the kernel killed one of its processes for using more than its memory
    /// limit (known where the sandbox has a cgroup of nanoclaw's).
    pub fn oom_killed(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(cgroup::SandboxCgroup::oom_killed)
    }
}

/// A short, stable label for a root directory.
pub fn root_label(root: &Path) -> String {
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of a new sandbox for `folder`.
pub fn sandbox_name(folder: &GroupFolder) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("nanoclaw-{folder}-{millis}")
}

/// Creates the backend for `kind`.
pub fn backend(kind: RuntimeKind, config: &Config) -> Arc<dyn SandboxBackend> {
    match kind {
        RuntimeKind::Bwrap => Arc::new(bwrap::Bwrap::new(config)),
        RuntimeKind::Podman => Arc::new(oci::Oci::new(oci::Flavor::Podman, config)),
        RuntimeKind::Docker => Arc::new(oci::Oci::new(oci::Flavor::Docker, config)),
    }
}

/// The backend to use: `CONTAINER_RUNTIME` if set (it must work), else the first that
/// works of docker, podman, bwrap. The error names what to install.
pub async fn select(config: &Config) -> Result<Arc<dyn SandboxBackend>, String> {
    if let Some(kind) = config.container_runtime {
        let b = backend(kind, config);
        return match b.probe().await {
            Ok(_) => Ok(b),
            Err(why) => Err(format!(
                "CONTAINER_RUNTIME={} does not work here: {why}",
                kind.name()
            )),
        };
    }
    let mut reasons = Vec::new();
    for kind in [RuntimeKind::Docker, RuntimeKind::Podman, RuntimeKind::Bwrap] {
        let b = backend(kind, config);
        match b.probe().await {
            Ok(_) => return Ok(b),
            Err(why) => reasons.push(format!("{}: {why}", kind.name())),
        }
    }
    Err(format!(
        "no sandbox backend works here. Install bubblewrap (`apt install bubblewrap`) or podman \
         (`apt install podman runc`), or start Docker. Details: {}",
        reasons.join("; ")
    ))
}

/// The agent binary on the host: `NANOCLAW_AGENT_BIN`, else next to this executable.
pub fn agent_binary(config: &Config) -> Result<PathBuf, String> {
    if let Some(path) = &config.agent_bin {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(format!(
                "NANOCLAW_AGENT_BIN={} is not a file",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate the nanoclaw executable: {e}"))?;
    let sibling = exe.with_file_name("nanoclaw-agent");
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(format!(
        "nanoclaw-agent was not found next to {} ; build it (`cargo build -p nanoclaw-agent`) or set NANOCLAW_AGENT_BIN",
        exe.display()
    ))
}

/// A group's sandbox settings, read and checked before anything is started.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub folder: GroupFolder,
    pub is_main: bool,
    pub jid: String,
    pub container: ContainerConfig,
    pub network: NetworkPolicy,
    pub identity: Identity,
    pub limits: Limits,
    /// The new sandbox's name (`nanoclaw-{folder}-{millis}`).
    pub name: String,
    /// Every registered group's additional mounts, with whether it is main (see
    /// `mounts::plan`).
    pub all_mounts: Vec<(bool, Vec<mounts::allowlist::AdditionalMount>)>,
}

impl Prepared {
    /// The egress policy of an `internet` sandbox.
    pub fn egress_policy(&self) -> crate::egress::EgressPolicy {
        crate::egress::EgressPolicy {
            allowed_domains: self.container.allowed_domains.clone(),
        }
    }

    /// One line about what the sandbox will enforce (for `sandbox exec` and run logs).
    pub fn describe(&self, backend: RuntimeKind) -> String {
        let network = match self.network {
            NetworkPolicy::Internet => format!(
                "internet ({}, through the host's egress proxy)",
                self.egress_policy().describe()
            ),
            // bwrap run by an ordinary user has no way to give it a namespace of its own
            // with a route out (`bwrap::private_network`).
            NetworkPolicy::Full
                if backend == RuntimeKind::Bwrap && self.identity == Identity::SameAsDaemon =>
            {
                "full (the host's own network: it reaches what this user reaches)".into()
            }
            NetworkPolicy::Full => "full (its own network namespace, NATed outwards)".into(),
            NetworkPolicy::None => "none (only the credential proxy)".into(),
        };
        format!(
            "{} sandbox for {}: runs as {}; {}; network {network}",
            backend.name(),
            self.folder,
            self.identity.describe(),
            self.limits.describe()
        )
    }
}

/// Reads `group`'s settings and identity, and prepares its folders for the sandbox user.
/// `allocate` gives the folder's host id when running as root (see
/// [`Identity::for_group`]); `all_groups` are the registered groups (for their mounts).
pub fn prepare(
    layout: &Layout,
    group: &RegisteredGroup,
    all_groups: &[RegisteredGroup],
    kind: RuntimeKind,
    allocate: impl FnOnce(&str) -> Result<u32, String>,
) -> Result<Prepared, SandboxError> {
    let invalid = |e: String| SandboxError::Invalid(format!("group {}: {e}", group.jid));
    let folder = group.folder().map_err(|e| invalid(e.to_string()))?;
    let container = ContainerConfig::parse(group.container_config.as_deref()).map_err(invalid)?;
    let identity = Identity::for_group(kind, &folder, allocate).map_err(invalid)?;
    let prepared_dirs = match identity.owner() {
        Some((uid, gid)) => layout
            .share_group_with_sandbox_user(&folder, uid, gid)
            .and_then(|()| {
                if group.is_main {
                    layout.share_with_sandbox_user(uid, gid)
                } else {
                    Ok(())
                }
            }),
        None => layout.create_group_dirs(&folder),
    };
    prepared_dirs.map_err(|e| invalid(format!("cannot prepare its folders: {e}")))?;
    match layout.remove_special_files_in_global() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            removed = n,
            "removed sockets and FIFOs from global memory (a channel between sandboxes)"
        ),
        Err(e) => return Err(invalid(format!("cannot check global memory: {e}"))),
    }
    // A group whose config cannot be read mounts nothing, so it counts with none.
    let all_mounts = all_groups
        .iter()
        .map(|g| {
            let mounts = ContainerConfig::parse(g.container_config.as_deref())
                .map(|c| c.additional_mounts)
                .unwrap_or_default();
            (g.is_main, mounts)
        })
        .collect();
    Ok(Prepared {
        all_mounts,
        network: container.network_for(group.is_main),
        limits: Limits::for_group(&container.limits),
        name: sandbox_name(&folder),
        folder,
        is_main: group.is_main,
        jid: group.jid.clone(),
        container,
        identity,
    })
}

/// A group's sandbox, exactly as its agent runs get it, plus the additional mounts that
/// were refused (each to be logged with its reason). `run_dir` holds this sandbox's host
/// sockets ([`services::RunServices`]); `token` is the run's credential-proxy token.
pub fn group_spec(
    config: &Config,
    layout: &Layout,
    prepared: &Prepared,
    run_dir: &Path,
    token: &str,
    command: Vec<String>,
    tty: bool,
) -> (SandboxSpec, MountPlan) {
    let allowlist = mounts::allowlist::load(&config.mount_allowlist_path(), &config.home);
    let plan = mounts::plan(
        layout,
        &prepared.folder,
        prepared.is_main,
        run_dir,
        &prepared.container.additional_mounts,
        &allowlist,
        &config.home,
        &[
            config.mount_allowlist_path(),
            config.sender_allowlist_path(),
        ],
        &prepared.all_mounts,
    );
    // The agent sends every model request over the proxy's Unix socket, mounted at
    // /run/nanoclaw/; the host part of this URL is only a label (the sandbox may have
    // no network at all). Port 0 means "pick any" on the host side, which is not a
    // usable URL, so the label falls back to the default port.
    let label_port = match config.credential_proxy_port {
        0 => 3001,
        p => p,
    };
    let proxy = format!("http://127.0.0.1:{label_port}");
    let mut env = vec![
        ("HOME".to_string(), "/home/node".to_string()),
        ("USER".to_string(), "node".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("PATH".to_string(), SANDBOX_PATH.to_string()),
        ("TZ".to_string(), config.zone.name.clone()),
        ("ANTHROPIC_BASE_URL".to_string(), proxy),
        ("ANTHROPIC_API_KEY".to_string(), token.to_string()),
        ("NANOCLAW_MODEL".to_string(), config.model.clone()),
        ("NANOCLAW_LLM_API".to_string(), config.llm_api.clone()),
        (
            "NANOCLAW_LLM_ATTEMPTS".to_string(),
            config.llm_attempts.to_string(),
        ),
        (
            "NANOCLAW_LLM_STREAM_IDLE_MS".to_string(),
            config.llm_stream_idle.as_millis().to_string(),
        ),
        (
            "NANOCLAW_PROXY_SOCKET".to_string(),
            format!(
                "{}/{}",
                crate::proxy::SANDBOX_SOCKET_DIR,
                crate::proxy::SOCKET_NAME
            ),
        ),
        (
            "NANOCLAW_NETWORK".to_string(),
            prepared.network.name().to_string(),
        ),
        // The run's context for `nanoclaw-agent mcp-server` (SPEC §9.1), whose stdin is
        // the MCP channel: set by the host, never by a caller.
        (
            "NANOCLAW_GROUP_FOLDER".to_string(),
            prepared.folder.as_str().to_string(),
        ),
        ("NANOCLAW_CHAT_JID".to_string(), prepared.jid.clone()),
        (
            "NANOCLAW_IS_MAIN".to_string(),
            if prepared.is_main { "1" } else { "0" }.to_string(),
        ),
    ];
    if prepared.container.harness == mounts::Harness::ClaudeCode {
        env.push((
            "NANOCLAW_HARNESS".to_string(),
            mounts::Harness::ClaudeCode.name().to_string(),
        ));
        env.push((
            "NANOCLAW_CLAUDE_CODE".to_string(),
            nanoclaw_protocol::CLAUDE_CODE_IN_SANDBOX.to_string(),
        ));
    }
    if !prepared.container.mcp_servers.is_empty() {
        env.push((
            "NANOCLAW_MCP_SERVERS".to_string(),
            mounts::mcp::to_agent_json(&prepared.container.mcp_servers),
        ));
    }
    // The API's own web search reads results into the context beyond anything the
    // proxy can bound, so a budgeted group's requests would be refused with it.
    let budgeted =
        crate::proxy::RunBudget::of(&prepared.container.budget, config.daily_token_budget)
            .is_limited();
    let web_search = prepared.container.web_search.unwrap_or(config.web_search) && !budgeted;
    env.push((
        "NANOCLAW_WEB_SEARCH".to_string(),
        if web_search { "on" } else { "off" }.to_string(),
    ));
    // memory_search ranks by meaning too when the proxy can embed for this group.
    if config.embeddings_url.is_some() && !budgeted {
        env.push(("NANOCLAW_EMBEDDINGS".to_string(), "on".to_string()));
    }
    if prepared.network == NetworkPolicy::Internet {
        // The sandbox has no network; the bridge offers the egress socket on loopback
        // and the usual variables point every tool at it.
        let http = format!("http://{}", crate::egress::SANDBOX_PROXY_ADDR);
        let socks = format!("socks5h://{}", crate::egress::SANDBOX_PROXY_ADDR);
        let no_proxy = "localhost,127.0.0.1,::1".to_string();
        for (name, value) in [
            ("HTTP_PROXY", &http),
            ("HTTPS_PROXY", &http),
            ("ALL_PROXY", &socks),
            ("NO_PROXY", &no_proxy),
        ] {
            env.push((name.to_string(), value.clone()));
            env.push((name.to_ascii_lowercase(), value.clone()));
        }
    }
    let spec = SandboxSpec {
        name: prepared.name.clone(),
        mounts: plan.mounts.clone(),
        env,
        workdir: mounts::GROUP.to_string(),
        command,
        network: prepared.network,
        limits: prepared.limits,
        identity: prepared.identity,
        tty,
        root_label: root_label(layout.root()),
        group_folder: prepared.folder.as_str().to_string(),
    };
    (spec, plan)
}

/// The environment a backend's own CLI process gets: enough to work, no secrets.
pub(crate) fn host_tool_env() -> Vec<(String, String)> {
    [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "XDG_RUNTIME_DIR",
        "TMPDIR",
        "LANG",
        "DOCKER_HOST",
        "CONTAINER_HOST",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect()
}

/// Runs a host tool to completion with [`host_tool_env`]; `Err` carries its output.
pub(crate) async fn run_tool(
    program: &Path,
    args: &[&str],
    timeout: std::time::Duration,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(host_tool_env())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "`{} {}` did not finish within {timeout:?}",
                program.display(),
                args.join(" ")
            ));
        }
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", program.display())),
        Ok(Ok(o)) => o,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text.trim().lines().last().unwrap_or("failed").to_string())
    }
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
