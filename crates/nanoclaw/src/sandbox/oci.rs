//! The OCI CLI backend: `podman` or `docker` (same flags; the binary and a few host
//! details differ). Containers are ephemeral (`--rm`), named `nanoclaw-{folder}-{millis}`,
//! labelled with the root they belong to (for orphan cleanup), with all capabilities
//! dropped, no-new-privileges, our seccomp profile (the same refusals as bubblewrap's
//! filter), pids/memory/ulimit limits, a read-only root filesystem with sized tmpfs for
//! `/tmp` and the home, and only the spec's mounts.
//!
//! Networks: `internet` and `none` get `--network=none` (`internet` reaches out through
//! the egress socket); `full` gets a slirp4netns network of its own (podman), never the
//! shared bridge, where one container could reach the others.
//!
//! As root, podman maps the container's uid 1000 to the group's own host id
//! (`--uidmap`); its overlay storage cannot id-map image layers on every kernel, so the
//! image is mounted once (`podman image mount`) and used as the root filesystem
//! (`--rootfs …:O`, a throw-away overlay). Docker has no per-container id mapping.
//!
//! Ulimits are always passed explicitly and kept within this process's hard limits:
//! runtimes otherwise apply defaults above them and fail to start the container. The OCI
//! runtime is probed: when the default one (often crun) cannot start a container here,
//! `runc` is used if installed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Identity, SANDBOX_GID, SANDBOX_UID, SandboxBackend, SandboxError, SandboxSpec, run_tool, which,
};
use crate::config::{Config, RuntimeKind};
use crate::mounts::NetworkPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Podman,
    Docker,
}

impl Flavor {
    pub fn binary(self) -> &'static str {
        match self {
            Flavor::Podman => "podman",
            Flavor::Docker => "docker",
        }
    }
}

pub const ROOT_LABEL: &str = "org.nanoclaw.root";
/// Sandbox variables passed by name, their values only in the client's environment.
const BY_NAME: [&str; 1] = ["ANTHROPIC_API_KEY"];
/// Where `container/Containerfile` puts the agent.
const AGENT_IN_IMAGE: &str = "/usr/local/bin/nanoclaw-agent";
pub const GROUP_LABEL: &str = "org.nanoclaw.group";

pub struct Oci {
    flavor: Flavor,
    program: Option<PathBuf>,
    image: String,
    /// `Some(None)`: the default runtime works; `Some(Some(r))`: use `--runtime r`.
    runtime: Mutex<Option<Option<String>>>,
    seccomp: Option<PathBuf>,
    /// The image id and where it is mounted (root podman's id-mapped containers).
    rootfs: Mutex<Option<(String, PathBuf)>>,
}

/// This process's hard limit for `resource`, capped at `want`.
fn within_hard_limit(resource: rustix::process::Resource, want: u64) -> u64 {
    rustix::process::getrlimit(resource)
        .maximum
        .map_or(want, |hard| hard.min(want))
}

impl Oci {
    pub fn new(flavor: Flavor, config: &Config) -> Oci {
        Oci {
            flavor,
            program: which(flavor.binary()),
            image: config.container_image.clone(),
            runtime: Mutex::new(None),
            seccomp: crate::sandbox::seccomp::oci_profile()
                .map(|_| crate::layout::Layout::new(&config.root).seccomp_profile()),
            rootfs: Mutex::new(None),
        }
    }

    /// The mounted image for `--rootfs` (root podman): mounted once per image id.
    async fn mounted_image(&self) -> Result<PathBuf, SandboxError> {
        let failed = |e: String| SandboxError::Unavailable {
            backend: "podman",
            reason: format!("cannot mount the agent image {}: {e}", self.image),
        };
        let program = self.program().map_err(failed)?;
        let id = run_tool(
            program,
            &["image", "inspect", "--format", "{{.Id}}", &self.image],
            Duration::from_secs(30),
        )
        .await
        .map_err(failed)?
        .trim()
        .to_string();
        let cached = self
            .rootfs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((cached_id, path)) = cached
            && cached_id == id
            && path.join("usr").is_dir()
        {
            return Ok(path);
        }
        let path = PathBuf::from(
            run_tool(program, &["image", "mount", &id], Duration::from_secs(60))
                .await
                .map_err(failed)?
                .trim(),
        );
        if !path.join("usr").is_dir() {
            return Err(failed(format!(
                "podman mounted it at {}, which holds no /usr",
                path.display()
            )));
        }
        *self.rootfs.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, path.clone()));
        Ok(path)
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn program(&self) -> Result<&PathBuf, String> {
        self.program.as_ref().ok_or_else(|| match self.flavor {
            Flavor::Podman => {
                "podman is not installed; install it (`apt install podman runc`)".to_string()
            }
            Flavor::Docker => "docker is not installed".to_string(),
        })
    }

    fn runtime_flag(&self) -> Option<String> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .flatten()
    }

    fn run_args(
        &self,
        spec: &SandboxSpec,
        runtime: Option<&str>,
        rootfs: Option<&std::path::Path>,
    ) -> Result<Vec<OsString>, SandboxError> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "-i".into(),
            "--name".into(),
            spec.name.clone(),
            "--label".into(),
            format!("{ROOT_LABEL}={}", spec.root_label),
            "--label".into(),
            format!("{GROUP_LABEL}={}", spec.group_folder),
            "--hostname".into(),
            "nanoclaw".into(),
        ];
        if spec.tty {
            a.push("-t".into());
        }
        if let Some(r) = runtime {
            a.extend(["--runtime".into(), r.to_string()]);
        }
        match (spec.identity, self.flavor) {
            (Identity::Mapped { uid, gid }, _) => {
                // uid/gid 1000 inside is the group's host id; other low ids map to
                // themselves, the host's real uid 1000 not at all.
                let after = SANDBOX_UID + 1;
                for (flag, host) in [("--uidmap", uid), ("--gidmap", gid)] {
                    a.extend([
                        format!("{flag}=0:0:{SANDBOX_UID}"),
                        format!("{flag}={SANDBOX_UID}:{host}:1"),
                        format!("{flag}={after}:{after}:{}", 65536 - after),
                    ]);
                }
                a.extend(["--user".into(), format!("{SANDBOX_UID}:{SANDBOX_GID}")]);
            }
            (Identity::Shared { uid, gid }, _) => {
                a.extend(["--user".into(), format!("{uid}:{gid}")])
            }
            (Identity::SameAsDaemon, Flavor::Podman) => a.extend([
                format!("--userns=keep-id:uid={SANDBOX_UID},gid={SANDBOX_GID}"),
                "--user".into(),
                format!("{SANDBOX_UID}:{SANDBOX_GID}"),
            ]),
            // Docker has no keep-id: run as the daemon's own uid so mounts are usable.
            (Identity::SameAsDaemon, Flavor::Docker) => a.extend([
                "--user".into(),
                format!(
                    "{}:{}",
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw()
                ),
            ]),
        }
        let limits = &spec.limits;
        let nofile = within_hard_limit(rustix::process::Resource::Nofile, limits.open_files);
        // Every container has a user namespace of its own but docker's as root (Shared),
        // where RLIMIT_NPROC would count all sandboxes together; the pids cgroup counts.
        let nproc = within_hard_limit(rustix::process::Resource::Nproc, limits.pids);
        let fsize = within_hard_limit(rustix::process::Resource::Fsize, limits.disk_bytes);
        let data = within_hard_limit(rustix::process::Resource::Data, limits.memory_bytes);
        a.extend([
            "--cap-drop=ALL".into(),
            "--security-opt=no-new-privileges".into(),
            "--pids-limit".into(),
            limits.pids.to_string(),
            "--memory".into(),
            limits.memory_bytes.to_string(),
            "--memory-swap".into(),
            limits.memory_bytes.to_string(),
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            format!("nproc={nproc}:{nproc}"),
            "--ulimit".into(),
            format!("fsize={fsize}:{fsize}"),
            "--ulimit".into(),
            format!("data={data}:{data}"),
            "--ulimit".into(),
            "core=0:0".into(),
            // Nothing but the mounts and these tmpfs is writable: the image's own
            // layer would be disk outside every quota.
            "--read-only".into(),
            "--tmpfs".into(),
            format!("/tmp:rw,nosuid,nodev,size={},mode=1777", limits.tmp_bytes),
            "--tmpfs".into(),
            format!(
                "/var/tmp:rw,nosuid,nodev,size={},mode=1777",
                limits.home_bytes
            ),
            format!("--shm-size={}", limits.home_bytes),
            // The runtime's own log of the container's output would be disk outside any
            // quota; the host reads the output itself (and caps it).
            "--log-driver=none".into(),
            "--tmpfs".into(),
            // `U`: owned by the container's user (podman ignores `mode` here).
            format!("/home/node:rw,nosuid,nodev,size={},U", limits.home_bytes),
        ]);
        if let Some(profile) = &self.seccomp {
            a.push(format!("--security-opt=seccomp={}", profile.display()));
        }
        match (spec.network, self.flavor) {
            (NetworkPolicy::None | NetworkPolicy::Internet, _) => a.push("--network=none".into()),
            // A network of its own, never the bridge other containers share.
            (NetworkPolicy::Full, Flavor::Podman) => {
                a.push("--network=slirp4netns:allow_host_loopback=false".into())
            }
            (NetworkPolicy::Full, Flavor::Docker) => {}
        }
        // The run token by name only: its value comes from the client's environment (see
        // `command`), so it is on no command line. The rest (nothing secret) by value,
        // so the client's own HOME, PATH and USER stay its own (rootless podman keeps
        // its storage under HOME).
        for (k, v) in &spec.env {
            if BY_NAME.contains(&k.as_str()) {
                a.extend(["--env".into(), k.clone()]);
            } else {
                a.extend(["--env".into(), format!("{k}={v}")]);
            }
        }
        for m in &spec.mounts {
            let source = m.source.to_str().ok_or_else(|| {
                SandboxError::Invalid(format!(
                    "{} is not valid UTF-8 and cannot be mounted",
                    m.source.display()
                ))
            })?;
            if source.contains(',') || m.target.contains(',') {
                return Err(SandboxError::Invalid(format!(
                    "{source} contains a comma, which {} cannot mount; move the root to a path without commas",
                    self.flavor.binary()
                )));
            }
            a.extend([
                "--mount".into(),
                format!(
                    "type=bind,source={source},target={}{}",
                    m.target,
                    if m.writable { "" } else { ",readonly" }
                ),
            ]);
        }
        a.extend(["--workdir".into(), spec.workdir.clone()]);
        match rootfs {
            // `--rootfs` takes the directory where the image would stand.
            Some(path) => a.extend(["--rootfs".into(), format!("{}:O", path.display())]),
            None => a.push(self.image.clone()),
        }
        a.extend(spec.command_with_init(AGENT_IN_IMAGE, None));
        Ok(a.into_iter().map(OsString::from).collect())
    }

    /// Finds an OCI runtime that can start a container of the image here: the default,
    /// else `runc`. Remembered for the life of the process.
    pub async fn detect_runtime(&self) -> Result<Option<String>, String> {
        if let Some(found) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(found);
        }
        let program = self.program()?.clone();
        let trial = |runtime: Option<&'static str>| {
            let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
            if let Some(r) = runtime {
                args.extend(["--runtime".into(), r.into()]);
            }
            let nofile = within_hard_limit(rustix::process::Resource::Nofile, 1024);
            let nproc = within_hard_limit(rustix::process::Resource::Nproc, 1024);
            args.extend([
                "--network=none".into(),
                "--ulimit".into(),
                format!("nofile={nofile}:{nofile}"),
                "--ulimit".into(),
                format!("nproc={nproc}:{nproc}"),
                self.image.clone(),
                "true".into(),
            ]);
            args
        };
        let default_args = trial(None);
        let refs: Vec<&str> = default_args.iter().map(String::as_str).collect();
        let chosen = match run_tool(&program, &refs, Duration::from_secs(60)).await {
            Ok(_) => None,
            Err(default_err) => {
                if self.flavor == Flavor::Podman && which("runc").is_some() {
                    let runc_args = trial(Some("runc"));
                    let refs: Vec<&str> = runc_args.iter().map(String::as_str).collect();
                    match run_tool(&program, &refs, Duration::from_secs(60)).await {
                        Ok(_) => {
                            tracing::info!(
                                "podman's default OCI runtime failed ({default_err}); using runc"
                            );
                            Some("runc".to_string())
                        }
                        Err(e) => {
                            return Err(format!(
                                "cannot start a container: {default_err}; with runc: {e}"
                            ));
                        }
                    }
                } else {
                    return Err(format!("cannot start a container: {default_err}"));
                }
            }
        };
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(chosen.clone());
        Ok(chosen)
    }

    /// Whether the image exists locally.
    pub async fn image_exists(&self) -> Result<bool, String> {
        let program = self.program()?;
        let args = match self.flavor {
            Flavor::Podman => vec!["image", "exists", &self.image],
            Flavor::Docker => vec!["image", "inspect", &self.image],
        };
        // The tool answering "no" is an answer; one that hangs or cannot run is not
        // (a stuck backend must not look like a deleted image).
        match run_tool(program, &args, Duration::from_secs(30)).await {
            Ok(_) => Ok(true),
            Err(e) if e.contains("did not finish within") || e.starts_with("cannot run ") => Err(e),
            Err(_) => Ok(false),
        }
    }
}

#[async_trait]
impl SandboxBackend for Oci {
    fn kind(&self) -> RuntimeKind {
        match self.flavor {
            Flavor::Podman => RuntimeKind::Podman,
            Flavor::Docker => RuntimeKind::Docker,
        }
    }

    async fn command(&self, spec: &SandboxSpec) -> Result<super::SandboxCommand, SandboxError> {
        let program = self.program().map_err(|reason| SandboxError::Unavailable {
            backend: self.flavor.binary(),
            reason,
        })?;
        let rootfs = match spec.identity {
            Identity::Mapped { .. } => Some(self.mounted_image().await?),
            _ => None,
        };
        let args = self.run_args(spec, self.runtime_flag().as_deref(), rootfs.as_deref())?;
        // Names of environment variables only: their values are not on the command line.
        tracing::debug!(sandbox = %spec.name, ?args, "{} run", self.flavor.binary());
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(super::host_tool_env())
            .envs(
                spec.env
                    .iter()
                    .filter(|(k, _)| BY_NAME.contains(&k.as_str()))
                    .map(|(k, v)| (k, v)),
            );
        Ok(super::SandboxCommand::new(cmd, None))
    }

    fn mechanisms(&self) -> Vec<String> {
        let root = Identity::daemon_is_root();
        let who = match (root, self.flavor) {
            (true, Flavor::Podman) => {
                "runs as root: each group's containers are its own host uid (--uidmap)"
            }
            (true, Flavor::Docker) => {
                "runs as root: every container is the real uid 1000 (docker cannot map ids per container; see doctor's warning)"
            }
            (false, _) => "rootless: containers are this user (keep-id user namespace)",
        };
        let cgroups = match (root, crate::sandbox::cgroup::support()) {
            (true, _) => "memory, pids and swap limits by the runtime's cgroups".to_string(),
            (false, crate::sandbox::cgroup::Support::V2 { .. }) => {
                "memory and pids limits by the runtime's cgroups (delegated cgroup v2)".to_string()
            }
            (false, _) => "no cgroups for rootless containers here (podman ignores --memory and --pids-limit on cgroup v1): memory is bounded per process (RLIMIT_DATA) and by the sized tmpfs, processes by RLIMIT_NPROC in each container's user namespace".to_string(),
        };
        vec![
            who.into(),
            cgroups,
            "read-only root, sized /tmp and home tmpfs; RLIMIT_DATA, RLIMIT_FSIZE (the disk quota), RLIMIT_NPROC".into(),
            if self.seccomp.is_some() {
                "nanoclaw's seccomp profile (namespaces, mounts, io_uring, BPF, keyrings refused)".into()
            } else {
                "the runtime's default seccomp profile (no nanoclaw profile on this architecture)".into()
            },
            match self.flavor {
                Flavor::Podman => "network: internet and none have no interface but loopback (internet goes through the egress proxy); full gets its own slirp4netns".into(),
                Flavor::Docker => "network: internet and none have no interface but loopback; full uses docker's bridge".into(),
            },
        ]
    }

    async fn stop(&self, name: &str) {
        let Ok(program) = self.program() else { return };
        let args: Vec<&str> = match self.flavor {
            Flavor::Podman => vec!["rm", "-f", "-t", "0", name],
            Flavor::Docker => vec!["rm", "-f", name],
        };
        if let Err(e) = run_tool(program, &args, Duration::from_secs(30)).await
            && !e.contains("no such container")
            && !e.contains("No such container")
        {
            tracing::warn!(container = name, "could not remove the container: {e}");
        }
    }

    async fn remove_orphans(&self, root_label: &str) -> usize {
        let Ok(program) = self.program() else {
            return 0;
        };
        let filter = format!("label={ROOT_LABEL}={root_label}");
        let listed = run_tool(
            program,
            &["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"],
            Duration::from_secs(30),
        )
        .await;
        let names = match listed {
            Ok(out) => out
                .lines()
                .map(str::trim)
                .filter(|n| n.starts_with("nanoclaw-"))
                .map(str::to_string)
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!("cannot list leftover containers: {e}");
                return 0;
            }
        };
        for name in &names {
            tracing::info!(container = %name, "stopping a sandbox left behind by a previous run");
            self.stop(name).await;
        }
        names.len()
    }

    async fn probe(&self) -> Result<String, String> {
        let program = self.program()?;
        let version = match self.flavor {
            Flavor::Podman => {
                run_tool(
                    program,
                    &["version", "--format", "{{.Client.Version}}"],
                    Duration::from_secs(20),
                )
                .await
            }
            Flavor::Docker => run_tool(
                program,
                &["info", "--format", "{{.ServerVersion}}"],
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| {
                format!("the docker client is installed but no Docker engine answers ({e})")
            }),
        }?;
        let version = version.trim().lines().last().unwrap_or("").to_string();
        let mut version = version;
        if self.flavor == Flavor::Podman && !Identity::daemon_is_root() {
            let driver = run_tool(
                program,
                &["info", "--format", "{{.Store.GraphDriverName}}"],
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_default();
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun");
            if let Err(e) = tun {
                version.push_str(&format!(
                    " (network \"full\" cannot work here: rootless podman needs /dev/net/tun, which this \
                     user cannot open ({e}); `chmod 0666 /dev/net/tun` as root, or keep such groups on \
                     \"internet\")"
                ));
            }
            if driver.trim() == "vfs" {
                version.push_str(
                    " (storage driver vfs: every sandbox copies the whole image, seconds per run; \
                     set driver = \"overlay\" in ~/.config/containers/storage.conf or install fuse-overlayfs)",
                );
            }
        }
        if self.image_exists().await? {
            let runtime = self.detect_runtime().await?;
            Ok(format!(
                "{} {version}, image {} present{}",
                self.flavor.binary(),
                self.image,
                runtime
                    .map(|r| format!(", OCI runtime {r}"))
                    .unwrap_or_default()
            ))
        } else {
            Ok(format!(
                "{} {version}; image {} not built yet (`nanoclaw image build` builds it)",
                self.flavor.binary(),
                self.image
            ))
        }
    }
}
