//! Sandboxes (SPEC §7): the primary security boundary. A [`SandboxSpec`] says exactly
//! what one sandbox gets (mounts, environment, network, limits, identity); a
//! [`SandboxBackend`] turns it into a process: `bwrap` (bubblewrap, no image) or an OCI
//! CLI (`podman`, `docker`; one implementation, the binary being the difference).
//!
//! Specs for a group are built in one place, [`group_spec`], so agent runs and
//! `nanoclaw sandbox exec` are identical.

pub mod bwrap;
pub mod image;
pub mod oci;
pub mod runner;
mod seccomp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::config::{Config, RuntimeKind};
use crate::layout::{GroupFolder, Layout};
use crate::mounts::{self, ContainerConfig, MountEntry, MountPlan, NetworkPolicy};
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
    /// The daemon is root: sandboxes run as the real, unprivileged uid 1000, never as
    /// root; the host gives that user its folders (see `Layout::share_with_sandbox_user`).
    Dedicated { uid: u32, gid: u32 },
}

impl Identity {
    pub fn current() -> Identity {
        if rustix::process::geteuid().is_root() {
            Identity::Dedicated {
                uid: SANDBOX_UID,
                gid: SANDBOX_GID,
            }
        } else {
            Identity::SameAsDaemon
        }
    }

    /// The owner files written for the sandbox should get, if it must be changed.
    pub fn owner(self) -> Option<(u32, u32)> {
        match self {
            Identity::SameAsDaemon => None,
            Identity::Dedicated { uid, gid } => Some((uid, gid)),
        }
    }
}

/// Resource limits, applied as far as each backend can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 4 << 30,
            pids: 1024,
            open_files: 4096,
        }
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
    fn command(&self, spec: &SandboxSpec) -> Result<SandboxCommand, SandboxError>;

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
    /// Returns a helper process that lives as long as the sandbox.
    async fn start(self: Box<Self>) -> Result<tokio::process::Child, SandboxError>;
}

/// A sandbox ready to start: set stdio and `kill_on_drop` on `command`, then `spawn`.
pub struct SandboxCommand {
    pub command: tokio::process::Command,
    after_spawn: Option<Box<dyn AfterSpawn>>,
}

impl SandboxCommand {
    pub(crate) fn new(
        command: tokio::process::Command,
        after_spawn: Option<Box<dyn AfterSpawn>>,
    ) -> SandboxCommand {
        SandboxCommand {
            command,
            after_spawn,
        }
    }

    /// Starts the sandbox (and whatever it needs alongside).
    pub async fn spawn(self) -> Result<SandboxChild, SandboxError> {
        let SandboxCommand {
            mut command,
            after_spawn,
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
        })
    }
}

/// A running sandbox. Dropping it kills helpers; the sandbox process itself is killed
/// on drop if its command asked for `kill_on_drop`.
pub struct SandboxChild {
    pub child: tokio::process::Child,
    _helper: Option<tokio::process::Child>,
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

/// Parameters of [`group_spec`] that differ between agent runs and `sandbox exec`.
pub struct SpecRequest<'a> {
    pub group: &'a RegisteredGroup,
    pub command: Vec<String>,
    /// The per-run token the agent presents to the credential proxy.
    pub run_token: &'a str,
    pub tty: bool,
}

/// A group's sandbox, exactly as its agent runs get it, plus the additional mounts that
/// were refused (each to be logged with its reason).
pub fn group_spec(
    config: &Config,
    layout: &Layout,
    request: SpecRequest<'_>,
) -> Result<(SandboxSpec, MountPlan), SandboxError> {
    let group = request.group;
    let folder = group
        .folder()
        .map_err(|e| SandboxError::Invalid(format!("group {}: {e}", group.jid)))?;
    let container = ContainerConfig::parse(group.container_config.as_deref())
        .map_err(|e| SandboxError::Invalid(format!("group {}: {e}", group.jid)))?;
    let allowlist = mounts::allowlist::load(&config.mount_allowlist_path(), &config.home);
    let identity = Identity::current();
    match identity.owner() {
        Some((uid, gid)) => layout.share_group_with_sandbox_user(&folder, uid, gid),
        None => layout.create_group_dirs(&folder),
    }
    .map_err(|e| {
        SandboxError::Invalid(format!(
            "cannot prepare the folders of group {}: {e}",
            group.jid
        ))
    })?;
    let plan = mounts::plan(
        layout,
        &folder,
        group.is_main,
        &container.additional_mounts,
        &allowlist,
        &config.home,
        &[
            config.mount_allowlist_path(),
            config.sender_allowlist_path(),
        ],
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
    let env = vec![
        ("HOME".to_string(), "/home/node".to_string()),
        ("USER".to_string(), "node".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("PATH".to_string(), SANDBOX_PATH.to_string()),
        ("TZ".to_string(), config.zone.name.clone()),
        ("ANTHROPIC_BASE_URL".to_string(), proxy),
        (
            "ANTHROPIC_API_KEY".to_string(),
            request.run_token.to_string(),
        ),
        ("NANOCLAW_MODEL".to_string(), config.model.clone()),
        ("NANOCLAW_LLM_API".to_string(), config.llm_api.clone()),
        (
            "NANOCLAW_LLM_ATTEMPTS".to_string(),
            config.llm_attempts.to_string(),
        ),
        (
            "NANOCLAW_PROXY_SOCKET".to_string(),
            format!(
                "{}/{}",
                crate::proxy::SANDBOX_SOCKET_DIR,
                crate::proxy::SOCKET_NAME
            ),
        ),
    ];
    let spec = SandboxSpec {
        name: sandbox_name(&folder),
        mounts: plan.mounts.clone(),
        env,
        workdir: mounts::GROUP.to_string(),
        command: request.command,
        network: container.network,
        limits: Limits::default(),
        identity,
        tty: request.tty,
        root_label: root_label(layout.root()),
        group_folder: folder.as_str().to_string(),
    };
    Ok((spec, plan))
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
