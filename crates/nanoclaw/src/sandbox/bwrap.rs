//! The bubblewrap backend: no image; the host's `/usr` read-only, a few `/etc` files,
//! sized `/tmp` and home tmpfs, `/proc`, `/dev`, new pid/ipc/uts/cgroup (and, unless the
//! policy is `full` for an ordinary user, net) namespaces, and exactly the mounts of the
//! spec; a cgroup of its own where the host has them (`cgroup.rs`).
//!
//! As an ordinary user, bwrap runs unprivileged in a user namespace where uid 1000 is the
//! user. As root, the sandbox gets a user namespace made here, in which uid and gid 1000
//! are the group's own host id (`Identity::Mapped`) and 0 is root: bwrap sets the mounts
//! up with root's rights and then `setpriv` drops the command to uid 1000 with no
//! capabilities at all, so nothing in the sandbox ever runs as root and no two groups
//! share a host uid.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AGENT_DIR_IN_SANDBOX, Identity, SANDBOX_GID, SANDBOX_UID, SandboxBackend, SandboxCommand,
    SandboxError, SandboxSpec, which,
};
use crate::config::{Config, RuntimeKind};
use crate::layout::Layout;
use crate::mounts::NetworkPolicy;

use super::orphans::{ORPHAN_MARK, OWNER_MARK};

/// `/etc` entries programs need (TLS roots, name resolution, the dynamic linker).
const ETC_ENTRIES: [&str; 13] = [
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "ssl",
];

pub struct Bwrap {
    program: Option<PathBuf>,
    setpriv: Option<PathBuf>,
    slirp: Option<PathBuf>,
    agent: Result<PathBuf, String>,
    /// The host's Claude Code, bound into sandboxes of `claude-code` groups.
    claude_code: Result<PathBuf, String>,
    support_dir: PathBuf,
    /// This process's owner lock (orphan cleanup), taken with the first sandbox.
    owner: std::sync::OnceLock<Option<super::orphans::Owner>>,
}

/// The agent binary found at start is gone (an upgrade half done, a cleaned directory).
fn missing_agent(agent: &std::path::Path) -> String {
    format!(
        "the agent binary {} is missing (moved or removed since nanoclaw started); reinstall nanoclaw or set NANOCLAW_AGENT_BIN to it",
        agent.display()
    )
}

impl Bwrap {
    pub fn new(config: &Config) -> Bwrap {
        Bwrap {
            program: which("bwrap"),
            setpriv: which("setpriv"),
            slirp: which("slirp4netns"),
            agent: super::agent_binary(config),
            claude_code: super::claude_code::host_binary(config),
            support_dir: Layout::new(&config.root).sandbox_support_dir(),
            owner: std::sync::OnceLock::new(),
        }
    }

    /// This process's owner lock, taken once (none if the folder cannot hold one: its
    /// sandboxes are then recognised by their parent only, as before owners existed).
    fn owner(&self) -> Option<&super::orphans::Owner> {
        self.owner
            .get_or_init(|| {
                super::orphans::Owner::take(&self.support_dir.join("owners"))
                    .map_err(|e| tracing::warn!("no owner lock for sandboxes: {e}"))
                    .ok()
            })
            .as_ref()
    }

    fn unavailable(reason: impl Into<String>) -> SandboxError {
        SandboxError::Unavailable {
            backend: "bwrap",
            reason: reason.into(),
        }
    }

    /// bwrap's arguments; `userns` is the descriptor of the sandbox's user namespace
    /// when this process made it (root).
    fn args(&self, spec: &SandboxSpec, userns: Option<i32>) -> Result<Vec<OsString>, SandboxError> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        match (spec.identity, userns) {
            (Identity::SameAsDaemon, _) => {
                let (uid, gid) = (SANDBOX_UID.to_string(), SANDBOX_GID.to_string());
                push(&[
                    "--unshare-user",
                    "--disable-userns",
                    "--uid",
                    &uid,
                    "--gid",
                    &gid,
                ]);
            }
            (_, Some(fd)) => push(&["--userns", &fd.to_string()]),
            (_, None) => {}
        }
        push(&[
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "nanoclaw",
        ]);
        if private_network(spec) {
            // A network namespace of its own: `full` gets outbound access through
            // slirp4netns (see `PrivateNetwork`), never the host's loopback.
            push(&["--unshare-net"]);
        }
        push(&["--die-with-parent", "--new-session", "--clearenv"]);
        for (k, v) in &spec.env {
            push(&["--setenv", k, v]);
        }

        push(&["--ro-bind", "/usr", "/usr"]);
        for dir in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(dir);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&host) {
                        a.extend([OsString::from("--symlink"), target.into(), host.into()]);
                    }
                }
                Ok(m) if m.is_dir() => a.extend([
                    OsString::from("--ro-bind"),
                    host.clone().into(),
                    host.into(),
                ]),
                _ => {}
            }
        }
        // bwrap creates missing parents of mount points owner-only; these must be
        // traversable by the sandbox user.
        for dir in ["/etc", "/opt", "/opt/nanoclaw", AGENT_DIR_IN_SANDBOX] {
            a.extend(["--perms", "0755", "--dir", dir].map(OsString::from));
        }
        for entry in ETC_ENTRIES {
            let path = format!("/etc/{entry}");
            a.extend(["--ro-bind-try", &path, &path].map(OsString::from));
        }
        if spec.network == NetworkPolicy::Full && private_network(spec) {
            // slirp4netns answers DNS on 10.0.2.3 (the host's resolver may be on its
            // loopback, which the sandbox cannot reach).
            a.extend([
                OsString::from("--ro-bind"),
                self.support_dir.join("resolv.conf").into(),
                OsString::from("/etc/resolv.conf"),
            ]);
        } else {
            a.extend(["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"].map(OsString::from));
        }
        for file in ["passwd", "group"] {
            a.extend([
                OsString::from("--ro-bind"),
                self.support_dir.join(file).into(),
                OsString::from(format!("/etc/{file}")),
            ]);
        }
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&["--proc", "/proc", "--dev", "/dev"]);
        // Sized: a tmpfs is memory, and an unsized one may take half the host's RAM.
        let (tmp, home) = (
            spec.limits.tmp_bytes.to_string(),
            spec.limits.home_bytes.to_string(),
        );
        push(&["--perms", "1777", "--size", &tmp, "--tmpfs", "/tmp"]);
        push(&["--perms", "0755", "--dir", "/home"]);
        push(&["--perms", "1777", "--size", &home, "--tmpfs", "/home/node"]);
        push(&["--perms", "0755", "--dir", "/workspace"]);
        // Parent of the credential proxy's socket directory.
        push(&["--perms", "0755", "--dir", "/run"]);
        if spec
            .mounts
            .iter()
            .any(|m| m.target.starts_with(crate::mounts::EXTRA))
        {
            push(&["--perms", "0755", "--dir", crate::mounts::EXTRA]);
        }
        for m in &spec.mounts {
            a.extend([
                OsString::from(if m.writable { "--bind" } else { "--ro-bind" }),
                m.source.clone().into(),
                OsString::from(&m.target),
            ]);
        }
        let agent = self.agent.as_ref().map_err(Bwrap::unavailable)?;
        if !agent.is_file() {
            return Err(Bwrap::unavailable(missing_agent(agent)));
        }
        a.extend([
            OsString::from("--ro-bind"),
            agent.clone().into(),
            OsString::from(format!("{AGENT_DIR_IN_SANDBOX}/nanoclaw-agent")),
        ]);
        if spec
            .env
            .iter()
            .any(|(k, v)| k == "NANOCLAW_HARNESS" && v == "claude-code")
        {
            // Without it the agent tells the chat what to install; nothing else differs.
            match &self.claude_code {
                Ok(claude) => {
                    a.extend(["--perms", "0755", "--dir", "/opt/claude-code"].map(OsString::from));
                    a.extend([
                        OsString::from("--ro-bind"),
                        claude.clone().into(),
                        OsString::from(nanoclaw_protocol::CLAUDE_CODE_IN_SANDBOX),
                    ]);
                }
                Err(why) => {
                    tracing::warn!(sandbox = %spec.name, "no Claude Code for this run: {why}")
                }
            }
        }
        a.extend(["--chdir", &spec.workdir].map(OsString::from));
        match spec.identity {
            Identity::SameAsDaemon => {
                a.extend(["--cap-drop", "ALL", "--"].map(OsString::from));
            }
            Identity::Mapped { .. } | Identity::Shared { .. } => {
                // In the sandbox's user namespace uid 1000 is the group's host id; with no
                // namespace of ours (Shared), it is the real uid 1000.
                let (uid, gid) = (SANDBOX_UID, SANDBOX_GID);
                if self.setpriv.is_none() {
                    return Err(Bwrap::unavailable(
                        "setpriv (util-linux) is needed to drop root privileges inside the sandbox; install util-linux",
                    ));
                }
                a.extend(
                    [
                        "--cap-drop",
                        "ALL",
                        "--cap-add",
                        "CAP_SETUID",
                        "--cap-add",
                        "CAP_SETGID",
                        "--cap-add",
                        "CAP_SETPCAP",
                        // bwrap enters the workdir (owned by the sandbox user) before
                        // setpriv runs; setpriv's uid change then clears every capability.
                        "--cap-add",
                        "CAP_DAC_OVERRIDE",
                        "--",
                        "/usr/bin/setpriv",
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                        "--inh-caps=-all",
                        "--bounding-set=-all",
                        "--",
                    ]
                    .map(OsString::from),
                );
            }
        }
        // As an ordinary user, RLIMIT_NPROC set out here would count every process of the
        // user; set inside the sandbox's user namespace it counts the sandbox's only.
        let nproc_inside = (spec.identity == Identity::SameAsDaemon).then_some(spec.limits.pids);
        let agent = format!("{AGENT_DIR_IN_SANDBOX}/nanoclaw-agent");
        a.extend(
            spec.command_with_init(&agent, nproc_inside)
                .into_iter()
                .map(OsString::from),
        );
        Ok(a)
    }
}

/// Whether the sandbox gets a network namespace of its own. Always for `none` and
/// `internet` (which reach the host only through their sockets); for `full` when
/// nanoclaw runs as root (slirp4netns connects it). As an ordinary user, slirp4netns
/// cannot join the namespace bwrap creates (it is refused by the kernel), so a `full`
/// sandbox shares the user's network, loopback included (docs/decisions.md).
fn private_network(spec: &SandboxSpec) -> bool {
    spec.network != NetworkPolicy::Full || spec.identity != Identity::SameAsDaemon
}

/// A user namespace for a sandbox of root's in which `uid`:`gid` 1000 is the group's
/// host id and 0 is root (so bwrap can still set up mounts), other low ids mapped to
/// themselves, and the host's real uid 1000 not mapped at all. Made by a short-lived
/// child that unshares it; its `/proc/{pid}/ns/user`, open, keeps it alive for bwrap's
/// `--userns`.
fn mapped_user_namespace(host_uid: u32, host_gid: u32) -> Result<OwnedFd, SandboxError> {
    let failed = |what: String| {
        Bwrap::unavailable(format!(
            "cannot create the sandbox's user namespace: {what}"
        ))
    };
    let mut holder = std::process::Command::new("/bin/sh");
    holder
        .args(["-c", "read _"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only the close and unshare system calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut holder, || {
            crate::daemon::close_lock_in_child();
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = holder
        .spawn()
        .map_err(|e| failed(format!("cannot start a helper: {e}")))?;
    let pid = child.id();
    let map = |host: u32| {
        let after = SANDBOX_UID + 1;
        format!(
            "0 0 {SANDBOX_UID}\n{SANDBOX_UID} {host} 1\n{after} {after} {}\n",
            65536 - after
        )
    };
    let result = std::fs::write(format!("/proc/{pid}/uid_map"), map(host_uid))
        .map_err(|e| failed(format!("uid_map: {e}")))
        .and_then(|()| {
            std::fs::write(format!("/proc/{pid}/gid_map"), map(host_gid))
                .map_err(|e| failed(format!("gid_map: {e}")))
        })
        .and_then(|()| {
            rustix::fs::open(
                format!("/proc/{pid}/ns/user"),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| failed(format!("cannot open it: {e}")))
        });
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// A pipe holding `bytes`, for a child to read: the read end, close-on-exec until the
/// child clears it. The pipe buffer (64 KiB) must hold it all.
fn inherited_pipe(bytes: &[u8]) -> Result<OwnedFd, SandboxError> {
    const PIPE_BUFFER: usize = 64 * 1024;
    if bytes.len() >= PIPE_BUFFER {
        return Err(SandboxError::Invalid(format!(
            "the sandbox configuration is too large ({} bytes); remove some additional mounts",
            bytes.len()
        )));
    }
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Bwrap::unavailable(format!("cannot create a pipe: {e}")))?;
    let mut write = std::fs::File::from(write);
    std::io::Write::write_all(&mut write, bytes)
        .map_err(|e| Bwrap::unavailable(format!("cannot pass data to bwrap: {e}")))?;
    Ok(read)
}

#[async_trait]
impl SandboxBackend for Bwrap {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Bwrap
    }

    async fn command(&self, spec: &SandboxSpec) -> Result<SandboxCommand, SandboxError> {
        let program = self.program.as_ref().ok_or_else(|| {
            Bwrap::unavailable(
                "bwrap is not installed; install bubblewrap (`apt install bubblewrap`)",
            )
        })?;
        // Data reaches bwrap through inherited descriptors: the user namespace, the
        // seccomp program, and all the arguments (`--args`), so neither the per-run token
        // nor host paths show up in any command line (`ps`, or `/proc/1/cmdline` inside
        // the sandbox).
        let mut inherited: Vec<OwnedFd> = Vec::new();
        let userns = match spec.identity {
            Identity::Mapped { uid, gid } => {
                let fd = mapped_user_namespace(uid, gid)?;
                let raw = fd.as_raw_fd();
                inherited.push(fd);
                Some(raw)
            }
            _ => None,
        };
        let mut args = self.args(spec, userns)?;
        let network = if spec.network == NetworkPolicy::Full && private_network(spec) {
            let slirp = self.slirp.clone().ok_or_else(|| {
                Bwrap::unavailable(
                    "slirp4netns is not installed; it gives bwrap sandboxes their own network \
                     (`apt install slirp4netns`), or set the group's network to \"none\"",
                )
            })?;
            let pipe = || {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| Bwrap::unavailable(format!("cannot create a pipe: {e}")))
            };
            // bwrap reports the sandbox's pid on `info`, then waits on `block` until the
            // network is up.
            let (info_read, info_write) = pipe()?;
            let (block_read, block_write) = pipe()?;
            args.splice(
                0..0,
                [
                    OsString::from("--info-fd"),
                    OsString::from(info_write.as_raw_fd().to_string()),
                    OsString::from("--block-fd"),
                    OsString::from(block_read.as_raw_fd().to_string()),
                ],
            );
            inherited.extend([info_write, block_read]);
            Some(PrivateNetwork {
                info: info_read,
                release: block_write,
                // slirp4netns joins the sandbox's own user namespace, where there is one.
                userns: !matches!(spec.identity, Identity::Shared { .. }),
                slirp,
            })
        } else {
            None
        };
        if let Some(program) = super::seccomp::filter() {
            let fd = inherited_pipe(&program)?;
            args.splice(
                0..0,
                [
                    OsString::from("--seccomp"),
                    OsString::from(fd.as_raw_fd().to_string()),
                ],
            );
            inherited.push(fd);
        }
        // bwrap reads only options from `--args`; the command follows `--` as usual.
        let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
        let command = args.split_off(split);
        let mut packed = Vec::new();
        for arg in &args {
            packed.extend_from_slice(arg.as_bytes());
            packed.push(0);
        }
        let args_fd = inherited_pipe(&packed)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--args")
            .arg(args_fd.as_raw_fd().to_string())
            .args(command)
            .env_clear()
            // bwrap's own processes carry it (the sandboxed command starts with a clean
            // environment), so leftovers of a killed daemon can be found (`remove_orphans`).
            .env(ORPHAN_MARK, &spec.root_label);
        if let Some(owner) = self.owner() {
            cmd.env(OWNER_MARK, &owner.name);
        }
        inherited.push(args_fd);
        let limits = spec.limits;
        // As root the count is per (user namespace, uid): the sandbox's own. As an
        // ordinary user it is set inside instead (see `args`).
        let nproc_outside = spec.identity != Identity::SameAsDaemon;
        let cgroup = super::cgroup::SandboxCgroup::create(&spec.name, &limits)
            .map_err(|e| Bwrap::unavailable(format!("cannot limit the sandbox: {e}")))?;
        let cgroup_procs: Vec<OwnedFd> = match &cgroup {
            Some(c) => c
                .procs_fds()
                .iter()
                .map(|fd| fd.try_clone())
                .collect::<Result<_, _>>()
                .map_err(|e| Bwrap::unavailable(format!("cannot pass the cgroup on: {e}")))?,
            None => Vec::new(),
        };
        // SAFETY: the closure runs in the forked child before exec and only makes close, write,
        // fcntl, umask and setrlimit system calls, which are async-signal-safe. It owns
        // the descriptors, so they stay open until the command is spawned.
        unsafe {
            cmd.pre_exec(move || {
                crate::daemon::close_lock_in_child();
                // First, so every process of the sandbox is in its cgroup from the start.
                super::cgroup::SandboxCgroup::join_in_child(&cgroup_procs)?;
                for fd in &inherited {
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
                use rustix::process::{Resource, Rlimit, setrlimit};
                let set = |resource, value: u64| {
                    let limit = Rlimit {
                        current: Some(value),
                        maximum: Some(value),
                    };
                    setrlimit(resource, limit).map_err(std::io::Error::from)
                };
                set(Resource::Core, 0)?;
                set(Resource::Nofile, limits.open_files)?;
                set(Resource::Data, limits.memory_bytes)?;
                set(Resource::Fsize, limits.disk_bytes)?;
                if nproc_outside {
                    set(Resource::Nproc, limits.pids)?;
                }
                Ok(())
            });
        }
        Ok(SandboxCommand::new(
            cmd,
            network.map(|n| Box::new(n) as Box<dyn super::AfterSpawn>),
        )
        .with_cgroup(cgroup))
    }

    fn mechanisms(&self) -> Vec<String> {
        let root = Identity::daemon_is_root();
        vec![
            if root {
                "runs as root: each group's sandboxes are its own host uid (a user namespace maps it to 1000)".into()
            } else {
                "runs as an ordinary user: sandboxes are this user, in a user namespace".into()
            },
            super::cgroup::describe(),
            "sized /tmp and home tmpfs; RLIMIT_DATA, RLIMIT_FSIZE (the disk quota), RLIMIT_NPROC per sandbox".into(),
            if super::seccomp::filter().is_some() {
                "seccomp filter refusing namespaces, mounts, io_uring, BPF, keyrings".into()
            } else {
                "no seccomp filter on this architecture".into()
            },
            format!(
                "network: internet and none have no interface but loopback (internet goes through the egress proxy); full {}",
                if root {
                    "has its own namespace with slirp4netns"
                } else {
                    "shares the user's network (no slirp4netns for unprivileged bwrap; prefer podman or set internet)"
                }
            ),
        ]
    }

    async fn stop(&self, _name: &str) {
        // Killing the bwrap process ends the sandbox: its pid namespace dies with it.
    }

    async fn remove_orphans(&self, root_label: &str) -> usize {
        // `--die-with-parent` ends sandboxes with the daemon, but a bwrap whose parent
        // died while it was still setting the sandbox up can be left waiting forever,
        // and so can the bwrap it forked to be the sandbox's init (see `orphans`).
        let Some(program) = self.program.clone() else {
            return 0;
        };
        let owners = self.support_dir.join("owners");
        let label = root_label.to_string();
        tokio::task::spawn_blocking(move || {
            use super::orphans;
            let processes = orphans::bwrap_processes(&program, &label);
            let killed = orphans::leftovers(&processes, |name| orphans::owner_alive(&owners, name))
                .into_iter()
                .filter(|pid| {
                    processes
                        .get(pid)
                        .is_some_and(|p| orphans::kill_listed(*pid, p.start))
                })
                .count();
            orphans::remove_dead_owners(&owners);
            killed
        })
        .await
        .unwrap_or(0)
    }

    async fn probe(&self) -> Result<String, String> {
        let program = self
            .program
            .as_ref()
            .ok_or("bwrap is not installed; install bubblewrap (`apt install bubblewrap`)")?;
        let agent = self.agent.as_ref().map_err(String::clone)?;
        if !agent.is_file() {
            return Err(missing_agent(agent));
        }
        if !self.support_dir.join("passwd").is_file() {
            return Err(format!(
                "{} is missing; start `nanoclaw run` once to create the root layout",
                self.support_dir.display()
            ));
        }
        let spec = SandboxSpec {
            name: "nanoclaw-probe".into(),
            mounts: vec![],
            env: vec![],
            workdir: "/".into(),
            command: vec!["/bin/true".into()],
            network: NetworkPolicy::None,
            limits: super::Limits::default(),
            identity: if Identity::daemon_is_root() {
                Identity::Mapped {
                    uid: super::PROBE_ID,
                    gid: super::PROBE_ID,
                }
            } else {
                Identity::SameAsDaemon
            },
            tty: false,
            root_label: String::new(),
            group_folder: String::new(),
        };
        if self.slirp.is_none() && Identity::daemon_is_root() {
            return Err(
                "slirp4netns is not installed; it gives bwrap sandboxes their own network (`apt install slirp4netns`)"
                    .into(),
            );
        }
        let mut sandbox = self.command(&spec).await.map_err(|e| e.to_string())?;
        sandbox
            .command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = sandbox.spawn().await.map_err(|e| e.to_string())?;
        let output = tokio::time::timeout(Duration::from_secs(10), child.child.wait_with_output())
            .await
            .map_err(|_| "a test sandbox did not finish within 10 s".to_string())?
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let result = if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        };
        match result {
            Ok(()) => Ok(format!(
                "{} works{}",
                program.display(),
                if super::seccomp::filter().is_some() {
                    ""
                } else {
                    " (no seccomp filter on this architecture)"
                }
            )),
            Err(e) if e.contains("ermission") || e.contains("namespace") => Err(format!(
                "bwrap cannot create its namespaces ({e}); unprivileged user namespaces may be disabled \
                 (sysctl kernel.unprivileged_userns_clone=1, or AppArmor's restrict_unprivileged_userns)"
            )),
            Err(e) => Err(format!("a test sandbox failed: {e}")),
        }
    }
}

/// The network of a `network: full` bwrap sandbox: its own namespace, connected to the
/// outside by slirp4netns (user-mode NAT) with the host's loopback unreachable.
struct PrivateNetwork {
    /// bwrap writes `{"child-pid": N}` here.
    info: OwnedFd,
    /// Writing here lets bwrap start the command.
    release: OwnedFd,
    /// The sandbox has its own user namespace, which slirp4netns must join.
    userns: bool,
    slirp: PathBuf,
}

/// How long bringing a sandbox's network up may take.
const NETWORK_SETUP: Duration = Duration::from_secs(10);

#[async_trait]
impl super::AfterSpawn for PrivateNetwork {
    async fn start(
        self: Box<Self>,
    ) -> Result<(tokio::process::Child, Option<OwnedFd>), SandboxError> {
        let PrivateNetwork {
            info,
            release,
            userns,
            slirp,
        } = *self;
        let failed = |what: String| {
            SandboxError::Invalid(format!("the sandbox network could not be set up: {what}"))
        };
        let info_text = read_until_closed_or(info, b'}')
            .await
            .map_err(|e| failed(format!("bwrap: {e}")))?;
        let pid: u32 = serde_json::from_slice::<serde_json::Value>(&info_text)
            .ok()
            .and_then(|v| v.get("child-pid").and_then(serde_json::Value::as_u64))
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| {
                failed(format!(
                    "bwrap reported {:?}",
                    String::from_utf8_lossy(&info_text)
                ))
            })?;

        // bwrap brings the sandbox's loopback up itself, after reporting the pid; doing
        // the same from slirp4netns at that moment makes one of them fail.
        wait_for_loopback(pid).await.map_err(failed)?;
        let (ready_read, ready_write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| failed(format!("cannot create a pipe: {e}")))?;
        // slirp4netns exits when the other end closes: when the sandbox is dropped, and
        // also when this process dies without dropping it.
        let (exit_read, exit_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| failed(format!("cannot create a pipe: {e}")))?;
        let mut cmd = tokio::process::Command::new(&slirp);
        cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .arg(format!("--ready-fd={}", ready_write.as_raw_fd()))
            .arg(format!("--exit-fd={}", exit_read.as_raw_fd()));
        if userns {
            cmd.arg(format!("--userns-path=/proc/{pid}/ns/user"));
        }
        cmd.arg(pid.to_string())
            .arg("tap0")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        // SAFETY: only close and fcntl calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                crate::daemon::close_lock_in_child();
                rustix::io::fcntl_setfd(&ready_write, rustix::io::FdFlags::empty())?;
                rustix::io::fcntl_setfd(&exit_read, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let helper = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot start slirp4netns: {e}")))?;
        drop(cmd);
        let ready = read_until_closed_or(ready_read, b'1')
            .await
            .map_err(|e| failed(format!("slirp4netns: {e}")))?;
        if !ready.contains(&b'1') {
            return Err(failed(
                "slirp4netns exited before the network was up".into(),
            ));
        }
        let mut release = std::fs::File::from(release);
        std::io::Write::write_all(&mut release, b"1")
            .map_err(|e| failed(format!("cannot release the sandbox: {e}")))?;
        Ok((helper, Some(exit_write)))
    }
}

/// Waits until the namespace of `pid` has its loopback address (up and routed).
async fn wait_for_loopback(pid: u32) -> Result<(), String> {
    let path = format!("/proc/{pid}/net/fib_trie");
    let deadline = tokio::time::Instant::now() + NETWORK_SETUP;
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if text.contains("127.0.0.1") => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot watch the sandbox's network ({e})")),
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the sandbox's loopback did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads from a pipe until `stop` arrives or the writer closes it, for at most
/// [`NETWORK_SETUP`].
async fn read_until_closed_or(fd: OwnedFd, stop: u8) -> Result<Vec<u8>, String> {
    let reading = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::from(fd);
        let mut data = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match std::io::Read::read(&mut file, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    data.extend_from_slice(&buf[..n]);
                    if buf[..n].contains(&stop) || data.len() > 65536 {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(data)
    });
    match tokio::time::timeout(NETWORK_SETUP, reading).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", NETWORK_SETUP.as_secs())),
    }
}
