//! The bubblewrap backend: no image; the host's `/usr` read-only, a few `/etc` files,
//! fresh `/tmp`, `/proc`, `/dev`, new pid/ipc/uts/cgroup (and, for `network: none`, net)
//! namespaces, and exactly the mounts of the spec.
//!
//! As an ordinary user, bwrap runs unprivileged in a user namespace where uid 1000 is the
//! user. As root, bwrap sets up the mounts with root's rights and then `setpriv` drops
//! the sandboxed command to the real uid 1000 with no capabilities at all, so nothing in
//! the sandbox ever runs as root.

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
    support_dir: PathBuf,
}

impl Bwrap {
    pub fn new(config: &Config) -> Bwrap {
        Bwrap {
            program: which("bwrap"),
            setpriv: which("setpriv"),
            slirp: which("slirp4netns"),
            agent: super::agent_binary(config),
            support_dir: Layout::new(&config.root).sandbox_support_dir(),
        }
    }

    fn unavailable(reason: impl Into<String>) -> SandboxError {
        SandboxError::Unavailable {
            backend: "bwrap",
            reason: reason.into(),
        }
    }

    fn args(&self, spec: &SandboxSpec) -> Result<Vec<OsString>, SandboxError> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        match spec.identity {
            Identity::SameAsDaemon => {
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
            Identity::Dedicated { .. } => {}
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
        push(&["--perms", "1777", "--tmpfs", "/tmp"]);
        push(&["--perms", "0755", "--dir", "/home"]);
        push(&["--perms", "1777", "--tmpfs", "/home/node"]);
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
        a.extend([
            OsString::from("--ro-bind"),
            agent.clone().into(),
            OsString::from(format!("{AGENT_DIR_IN_SANDBOX}/nanoclaw-agent")),
        ]);
        a.extend(["--chdir", &spec.workdir].map(OsString::from));
        match spec.identity {
            Identity::SameAsDaemon => {
                a.extend(["--cap-drop", "ALL", "--"].map(OsString::from));
            }
            Identity::Dedicated { uid, gid } => {
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
        a.extend(spec.command.iter().map(OsString::from));
        Ok(a)
    }
}

/// Whether the sandbox gets a network namespace of its own. Always for `none`; for
/// `full` when nanoclaw runs as root (slirp4netns connects it). As an ordinary user,
/// slirp4netns cannot join the namespace bwrap creates (it is refused by the kernel), so a
/// `full` sandbox shares the user's network, loopback included (docs/decisions.md).
fn private_network(spec: &SandboxSpec) -> bool {
    spec.network == NetworkPolicy::None || spec.identity != Identity::SameAsDaemon
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

    fn command(&self, spec: &SandboxSpec) -> Result<SandboxCommand, SandboxError> {
        let program = self.program.as_ref().ok_or_else(|| {
            Bwrap::unavailable(
                "bwrap is not installed; install bubblewrap (`apt install bubblewrap`)",
            )
        })?;
        let mut args = self.args(spec)?;
        // Data reaches bwrap through inherited pipes: the seccomp program, and all the
        // arguments (`--args`), so neither the per-run token nor host paths show up in
        // any command line (`ps`, or `/proc/1/cmdline` inside the sandbox).
        let mut inherited: Vec<OwnedFd> = Vec::new();
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
                userns: spec.identity == Identity::SameAsDaemon,
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
            .env_clear();
        inherited.push(args_fd);
        let limits = spec.limits;
        let dedicated = matches!(spec.identity, Identity::Dedicated { .. });
        // SAFETY: the closure runs in the forked child before exec and only makes fcntl
        // and setrlimit system calls, which are async-signal-safe. It owns the pipes, so
        // the descriptors stay open until the command is spawned.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &inherited {
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
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
                if dedicated {
                    // Counted per uid: shared by every sandbox of the dedicated user.
                    set(Resource::Nproc, limits.pids)?;
                }
                Ok(())
            });
        }
        Ok(SandboxCommand::new(
            cmd,
            network.map(|n| Box::new(n) as Box<dyn super::AfterSpawn>),
        ))
    }

    async fn stop(&self, _name: &str) {
        // Killing the bwrap process ends the sandbox: its pid namespace dies with it.
    }

    async fn remove_orphans(&self, _root_label: &str) -> usize {
        // `--die-with-parent`: sandboxes die with the daemon, so none can be left over.
        0
    }

    async fn probe(&self) -> Result<String, String> {
        let program = self
            .program
            .as_ref()
            .ok_or("bwrap is not installed; install bubblewrap (`apt install bubblewrap`)")?;
        self.agent.as_ref().map_err(String::clone)?;
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
            network: NetworkPolicy::Full,
            limits: super::Limits::default(),
            identity: Identity::current(),
            tty: false,
            root_label: String::new(),
            group_folder: String::new(),
        };
        if self.slirp.is_none() && Identity::current() != Identity::SameAsDaemon {
            return Err(
                "slirp4netns is not installed; it gives bwrap sandboxes their own network (`apt install slirp4netns`)"
                    .into(),
            );
        }
        let mut sandbox = self.command(&spec).map_err(|e| e.to_string())?;
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
    async fn start(self: Box<Self>) -> Result<tokio::process::Child, SandboxError> {
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
        let mut cmd = tokio::process::Command::new(&slirp);
        cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .arg(format!("--ready-fd={}", ready_write.as_raw_fd()));
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
        // SAFETY: only an fcntl call between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                rustix::io::fcntl_setfd(&ready_write, rustix::io::FdFlags::empty())?;
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
        Ok(helper)
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
