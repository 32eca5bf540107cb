//! The agent image for podman/docker: `container/Containerfile`, built by
//! `nanoclaw image build` and, when missing or stale, by the daemon before its first run.
//!
//! The image carries the sha256 of the `nanoclaw-agent` it contains as the label
//! `org.nanoclaw.agent-build`; an image whose label differs from the agent next to this
//! `nanoclaw` is stale. Without a container registry, the Debian base is made with
//! `debootstrap` and imported as `localhost/nanoclaw-base:bookworm-browser-2` (the tag
//! names its package set and sources: a base made before is not reused).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::oci::{Flavor, Oci};
use super::{run_tool, which};
use crate::config::Config;
use crate::layout::Layout;

pub const AGENT_BUILD_LABEL: &str = "org.nanoclaw.agent-build";
pub const UPSTREAM_BASE: &str = "docker.io/library/debian:bookworm-slim";
pub const LOCAL_BASE: &str = "localhost/nanoclaw-base:bookworm-browser-2";
const CONTAINERFILE: &str = include_str!("../../../../container/Containerfile");
/// Packages the debootstrap base gets (the Containerfile's tools).
const BASE_PACKAGES: &str = "ca-certificates,curl,git,jq,python3,ripgrep";
/// Installed into it afterwards with apt (debootstrap cannot configure a desktop
/// program's dependency tree): Chromium for the Browser tool, a font for screenshots.
const BROWSER_PACKAGES: &str = "chromium fonts-dejavu-core";

/// Steps of a build, for "step n of m".
const STEPS: usize = 3;

/// What a build reports as it goes: numbered steps with how long they usually take,
/// notes on what was decided, and the lines the tools print.
pub trait Progress: Send {
    /// Step `n` of `total` begins.
    fn step(&mut self, n: usize, total: usize, title: &str, usually: &str);
    /// What was decided or found (one line).
    fn note(&mut self, line: &str);
    /// A line a tool printed during the current step.
    fn detail(&mut self, line: &str);
    /// The current step ended well.
    fn done(&mut self);
}

/// Progress for logs: one line per step (and per note); tools' lines at debug level.
#[derive(Default)]
pub struct LogProgress {
    started: Option<(String, std::time::Instant)>,
}

impl Progress for LogProgress {
    fn step(&mut self, n: usize, total: usize, title: &str, usually: &str) {
        tracing::info!("image build: step {n} of {total}: {title} (usually {usually})");
        self.started = Some((title.to_string(), std::time::Instant::now()));
    }
    fn note(&mut self, line: &str) {
        tracing::info!("image build: {line}");
    }
    fn detail(&mut self, line: &str) {
        tracing::debug!("image build: {line}");
    }
    fn done(&mut self) {
        if let Some((title, at)) = self.started.take() {
            tracing::info!("image build: {title}: done in {} s", at.elapsed().as_secs());
        }
    }
}

/// Progress for a person: on a terminal, a line per step with a spinner, the time so
/// far and the tool's latest line, redrawn in place; elsewhere (a log file, CI), one
/// line per step and its end.
pub struct TerminalProgress<W: std::io::Write + Send> {
    out: W,
    terminal: bool,
    started: Option<(String, std::time::Instant)>,
    spin: usize,
}

impl TerminalProgress<std::io::Stderr> {
    /// Writes to stderr, redrawing only when it is a terminal.
    pub fn stderr() -> Self {
        TerminalProgress::new(
            std::io::stderr(),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
    }
}

impl<W: std::io::Write + Send> TerminalProgress<W> {
    pub fn new(out: W, terminal: bool) -> Self {
        TerminalProgress {
            out,
            terminal,
            started: None,
            spin: 0,
        }
    }

    /// Clears the line being redrawn (on a terminal).
    fn clear(&mut self) {
        if self.terminal {
            let _ = write!(self.out, "\r\x1b[2K");
        }
    }
}

impl<W: std::io::Write + Send> Progress for TerminalProgress<W> {
    fn step(&mut self, n: usize, total: usize, title: &str, usually: &str) {
        self.clear();
        let _ = writeln!(self.out, "[{n}/{total}] {title} (usually {usually})");
        self.started = Some((format!("[{n}/{total}] {title}"), std::time::Instant::now()));
    }
    fn note(&mut self, line: &str) {
        self.clear();
        let _ = writeln!(self.out, "      {line}");
    }
    fn detail(&mut self, line: &str) {
        if !self.terminal {
            return;
        }
        const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        self.spin = (self.spin + 1) % SPINNER.len();
        let elapsed = self
            .started
            .as_ref()
            .map_or(0, |(_, at)| at.elapsed().as_secs());
        let shown: String = line.chars().filter(|c| !c.is_control()).take(60).collect();
        let _ = write!(
            self.out,
            "\r\x1b[2K      {} {}:{:02} {shown}",
            SPINNER[self.spin],
            elapsed / 60,
            elapsed % 60
        );
        let _ = self.out.flush();
    }
    fn done(&mut self) {
        if let Some((title, at)) = self.started.take() {
            self.clear();
            let _ = writeln!(self.out, "{title}: done in {} s", at.elapsed().as_secs());
        }
    }
}

/// The image's build id, hex: the sha256 of its recipe (the Containerfile and the base,
/// whose tag names its packages and sources) and of the agent binary, so a new agent
/// or a new recipe (Chromium joining the base, security sources) makes it stale.
pub fn agent_build_id(agent: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(agent)?;
    let mut hasher = Sha256::new();
    hasher.update(CONTAINERFILE.as_bytes());
    hasher.update(LOCAL_BASE.as_bytes());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    Missing,
    Stale { found: String },
    Current,
}

/// Whether the image exists and contains `build_id`.
pub async fn state(oci: &Oci, build_id: &str) -> Result<ImageState, String> {
    if !oci.image_exists().await? {
        return Ok(ImageState::Missing);
    }
    let label = label(oci, AGENT_BUILD_LABEL).await?;
    Ok(if label == build_id {
        ImageState::Current
    } else {
        ImageState::Stale {
            found: if label.is_empty() {
                "none".into()
            } else {
                label
            },
        }
    })
}

/// The image's label `name` (empty when it has none).
pub async fn label(oci: &Oci, name: &str) -> Result<String, String> {
    let format = format!("{{{{ index .Config.Labels \"{name}\" }}}}");
    let label = run_tool(
        oci.program()?,
        &["image", "inspect", "--format", &format, oci.image()],
        Duration::from_secs(30),
    )
    .await?;
    let label = label.trim();
    Ok(if label == "<no value>" { "" } else { label }.to_string())
}

/// Builds the image unless it is current (or `force`). `progress` gets each line of
/// output as it happens. Returns the state the image was in before.
pub async fn ensure(
    oci: &Oci,
    config: &Config,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<ImageState, String> {
    let agent = super::agent_binary(config)?;
    let build_id =
        agent_build_id(&agent).map_err(|e| format!("cannot read {}: {e}", agent.display()))?;
    let before = state(oci, &build_id).await?;
    match &before {
        ImageState::Current if !force => return Ok(before),
        ImageState::Current => progress.note(&format!("rebuilding image {} (forced)", oci.image())),
        ImageState::Missing => progress.note(&format!(
            "image {} does not exist; building it",
            oci.image()
        )),
        ImageState::Stale { found } => progress.note(&format!(
            "image {} is stale (contains agent build {}, this agent is {}); rebuilding",
            oci.image(),
            &found[..found.len().min(12)],
            &build_id[..12]
        )),
    }
    let layout = Layout::new(&config.root);
    let context = layout
        .data_dir()
        .join(format!("image-build-{}", std::process::id()));
    let result = build(oci, config, &agent, &build_id, &context, progress).await;
    let _ = std::fs::remove_dir_all(&context);
    result?;
    // Each build leaves the one before it untagged: about a gigabyte each, which filled
    // disks. They go now, unless a sandbox still runs from one.
    for line in remove_stale(oci, AGENT_BUILD_LABEL).await {
        progress.note(&line);
    }
    Ok(before)
}

/// Removes the untagged images that carry `label` (earlier agent builds, never an image
/// of the user's), skipping any a container uses. Root podman runs sandboxes from a
/// mounted image (`--rootfs`), which `rmi` would unmount under them: a mounted image is
/// removed only when no container's rootfs is its mount. Returns a line for each image
/// removed or kept.
pub async fn remove_stale(oci: &Oci, label: &str) -> Vec<String> {
    let Ok(program) = oci.program() else {
        return Vec::new();
    };
    let wait = Duration::from_secs(60);
    let filter = format!("label={label}");
    let listed = match run_tool(
        program,
        &[
            "images",
            "--quiet",
            "--no-trunc",
            "--filter",
            "dangling=true",
            "--filter",
            &filter,
        ],
        wait,
    )
    .await
    {
        Ok(listed) => listed,
        Err(e) => {
            return vec![format!(
                "cannot list earlier agent images to remove them: {e}"
            )];
        }
    };
    let mut stale: Vec<String> = Vec::new();
    for id in listed.split_whitespace() {
        let id = id.trim_start_matches("sha256:").to_string();
        if !stale.contains(&id) {
            stale.push(id);
        }
    }
    if stale.is_empty() {
        return Vec::new();
    }
    // Mounted images (podman only) and the rootfs of every container.
    let mut mounts: Vec<(String, String)> = Vec::new();
    let mut rootfs: Vec<String> = Vec::new();
    if oci.flavor() == Flavor::Podman {
        match run_tool(program, &["image", "mount"], wait).await {
            Ok(out) => {
                for line in out.lines() {
                    let mut words = line.split_whitespace();
                    if let (Some(id), Some(path)) = (words.next(), words.next()) {
                        mounts.push((id.trim_start_matches("sha256:").into(), path.into()));
                    }
                }
            }
            Err(e) => {
                return vec![format!(
                    "kept earlier agent images: cannot list mounts: {e}"
                )];
            }
        }
        if !mounts.is_empty() {
            let ids = match run_tool(program, &["ps", "--all", "--quiet", "--no-trunc"], wait).await
            {
                Ok(ids) => ids,
                Err(e) => {
                    return vec![format!(
                        "kept earlier agent images: cannot list containers: {e}"
                    )];
                }
            };
            for id in ids.split_whitespace() {
                // A container that is gone by now uses nothing.
                if let Ok(path) =
                    run_tool(program, &["inspect", "--format", "{{.Rootfs}}", id], wait).await
                {
                    rootfs.push(path.trim().to_string());
                }
            }
        }
    }
    let mut lines = Vec::new();
    for id in stale {
        let short = &id[..id.len().min(12)];
        let mounted: Vec<&String> = mounts
            .iter()
            .filter(|(m, _)| m.starts_with(&id) || id.starts_with(m.as_str()))
            .map(|(_, path)| path)
            .collect();
        if mounted.iter().any(|path| {
            rootfs
                .iter()
                .any(|r| r.trim_end_matches(":O") == path.as_str())
        }) {
            lines.push(format!(
                "kept the earlier agent image {short}: a sandbox runs from it (the next build removes it)"
            ));
            continue;
        }
        // Never forced: an image a container was made from stays. (podman removes a
        // mounted image, unmounting its layer unless another image shares it.)
        match run_tool(program, &["rmi", &id], wait).await {
            Ok(_) => lines.push(format!("removed the earlier agent image {short}")),
            Err(e) => lines.push(format!("kept the earlier agent image {short}: {e}")),
        }
    }
    lines
}

async fn build(
    oci: &Oci,
    config: &Config,
    agent: &Path,
    build_id: &str,
    context: &Path,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let program = oci.program()?.clone();
    std::fs::create_dir_all(context)
        .map_err(|e| format!("cannot create {}: {e}", context.display()))?;
    std::fs::write(context.join("Containerfile"), CONTAINERFILE)
        .map_err(|e| format!("cannot write the Containerfile: {e}"))?;
    let agent_copy = context.join("nanoclaw-agent");
    std::fs::copy(agent, &agent_copy)
        .map_err(|e| format!("cannot copy {}: {e}", agent.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent_copy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make the agent executable: {e}"))?;
    }

    // Claude Code is optional: without it the image is built all the same, and a
    // claude-code group's run says what to install.
    let claude_dir = context.join("claude-code");
    std::fs::create_dir_all(&claude_dir)
        .map_err(|e| format!("cannot create {}: {e}", claude_dir.display()))?;
    let claude_code = match super::claude_code::for_image(config).await {
        Ok(claude) => {
            let copy = claude_dir.join("claude");
            std::fs::copy(&claude, &copy)
                .map_err(|e| format!("cannot copy {}: {e}", claude.display()))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("cannot make Claude Code executable: {e}"))?;
            }
            progress.note(&format!(
                "Claude Code {} goes into the image (from {})",
                nanoclaw_protocol::CLAUDE_CODE_VERSION,
                claude.display()
            ));
            nanoclaw_protocol::CLAUDE_CODE_VERSION
        }
        Err(why) => {
            progress.note(&format!(
                "the image gets no Claude Code, so groups with the claude-code harness cannot run in it: {why}"
            ));
            "none"
        }
    };
    progress.step(
        1,
        STEPS,
        "the Debian base image",
        "seconds once it exists; 2 to 6 minutes the first time, when debootstrap and apt make it",
    );
    let base = base_image(oci, config, &program, context, progress).await?;
    progress.done();
    progress.step(
        2,
        STEPS,
        &format!("building {} from {base}", oci.image()),
        "under a minute",
    );
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or(4096, |h| h.min(4096));
    let nproc = rustix::process::getrlimit(rustix::process::Resource::Nproc)
        .maximum
        .map_or(4096, |h| h.min(4096));
    let mut args: Vec<String> = vec!["build".into()];
    if oci.flavor() == Flavor::Podman {
        if let Some(runtime) = base_runtime(&program, &base).await {
            args.extend(["--runtime".into(), runtime]);
        }
        args.extend([
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            format!("nproc={nproc}:{nproc}"),
        ]);
    }
    args.extend([
        "--build-arg".into(),
        format!("BASE={base}"),
        "--build-arg".into(),
        format!("AGENT_BUILD={build_id}"),
        "--label".into(),
        format!("{AGENT_BUILD_LABEL}={build_id}"),
        "--label".into(),
        format!("{}={claude_code}", super::claude_code::LABEL),
        "-t".into(),
        oci.image().to_string(),
        "-f".into(),
        context.join("Containerfile").display().to_string(),
        context.display().to_string(),
    ]);
    stream(&program, &args, None, progress).await?;
    progress.done();
    progress.step(3, STEPS, "checking the new image", "a second");
    match state(oci, build_id).await? {
        ImageState::Current => {}
        other => {
            return Err(format!(
                "the build finished but {} is {other:?}; run `nanoclaw image build --force`",
                oci.image()
            ));
        }
    }
    progress.done();
    progress.note(&format!(
        "built {} (agent build {})",
        oci.image(),
        &build_id[..12]
    ));
    Ok(())
}

/// A runtime override for `podman build` when the default OCI runtime cannot run the
/// base here (see `Oci::detect_runtime`).
async fn base_runtime(program: &Path, base: &str) -> Option<String> {
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .map_or(1024, |h| h.min(1024));
    let ulimit = format!("nofile={nofile}:{nofile}");
    let default = run_tool(
        program,
        &[
            "run",
            "--rm",
            "--network=none",
            "--ulimit",
            &ulimit,
            base,
            "true",
        ],
        Duration::from_secs(60),
    )
    .await;
    if default.is_ok() || which("runc").is_none() {
        return None;
    }
    Some("runc".into())
}

/// The base image to build from: the upstream Debian image if it can be pulled (or is
/// present), else a local debootstrap base.
async fn base_image(
    oci: &Oci,
    config: &Config,
    program: &Path,
    context: &Path,
    progress: &mut dyn Progress,
) -> Result<String, String> {
    let exists = |image: &'static str| async move {
        let args = match oci.flavor() {
            Flavor::Podman => vec!["image", "exists", image],
            Flavor::Docker => vec!["image", "inspect", image],
        };
        run_tool(program, &args, Duration::from_secs(30))
            .await
            .is_ok()
    };
    if exists(LOCAL_BASE).await {
        progress.note(&format!("using the local base image {LOCAL_BASE}"));
        return Ok(LOCAL_BASE.into());
    }
    if exists(UPSTREAM_BASE).await {
        return Ok(UPSTREAM_BASE.into());
    }
    progress.note(&format!("pulling {UPSTREAM_BASE}"));
    match run_tool(program, &["pull", UPSTREAM_BASE], Duration::from_secs(90)).await {
        Ok(_) => return Ok(UPSTREAM_BASE.into()),
        Err(e) => progress.note(&format!(
            "cannot pull {UPSTREAM_BASE} ({e}); making a base with debootstrap instead"
        )),
    }
    if !rustix::process::geteuid().is_root() {
        return Err(format!(
            "{UPSTREAM_BASE} cannot be pulled and debootstrap needs root; run `sudo nanoclaw image build` once"
        ));
    }
    let debootstrap = which("debootstrap")
        .ok_or("debootstrap is not installed; install it (`apt install debootstrap`) or make a registry reachable")?;
    let rootfs = context.join("rootfs");
    stream(
        &debootstrap,
        &[
            "--variant=minbase".into(),
            format!("--include={BASE_PACKAGES}"),
            "bookworm".into(),
            rootfs.display().to_string(),
            config.debian_mirror.clone(),
        ],
        None,
        progress,
    )
    .await?;
    progress.note(&format!("adding {BROWSER_PACKAGES} with apt"));
    add_browser(&rootfs, &config.debian_mirror, progress).await?;
    progress.note(&format!("importing the debootstrap base as {LOCAL_BASE}"));
    let tar = which("tar").ok_or("tar is not installed")?;
    let mut tar_child = tokio::process::Command::new(tar)
        .args(["-C"])
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let tar_out: Stdio = tar_child
        .stdout
        .take()
        .ok_or("tar has no stdout")?
        .try_into()
        .map_err(|e| format!("cannot pipe tar into {}: {e}", program.display()))?;
    let imported = stream(
        program,
        &["import".into(), "-".into(), LOCAL_BASE.into()],
        Some(tar_out),
        progress,
    )
    .await;
    let tar_status = tar_child
        .wait()
        .await
        .map_err(|e| format!("tar failed: {e}"))?;
    imported?;
    if !tar_status.success() {
        return Err(format!("tar of the debootstrap base failed ({tar_status})"));
    }
    Ok(LOCAL_BASE.into())
}

/// Installs [`BROWSER_PACKAGES`] into the debootstrap tree with its own apt (in a mount
/// namespace of its own, so the `/proc` apt's scripts need is never left mounted), from
/// the release, its updates and its security archive, and upgrades what debootstrap put
/// there: a browser that reads any page must carry Debian's latest fixes.
async fn add_browser(
    rootfs: &Path,
    mirror: &str,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let unshare = which("unshare").ok_or("unshare is not installed (util-linux)")?;
    let resolv = rootfs.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    std::fs::copy("/etc/resolv.conf", &resolv)
        .map_err(|e| format!("cannot give the base this machine's /etc/resolv.conf: {e}"))?;
    let mirror = mirror.trim_end_matches('/');
    let mut sources = format!("deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n");
    // Debian's own mirrors keep the security archive beside the release.
    if let Some(base) = mirror.strip_suffix("/debian") {
        sources.push_str(&format!(
            "deb {base}/debian-security bookworm-security main\n"
        ));
    } else {
        progress.note(&format!(
            "{mirror} does not end in /debian: no security archive is added (Chromium gets the release's updates only)"
        ));
    }
    std::fs::write(rootfs.join("etc/apt/sources.list"), sources)
        .map_err(|e| format!("cannot write the base's apt sources: {e}"))?;
    let script = format!(
        "mount -t proc proc \"$0/proc\" && \
         chroot \"$0\" apt-get update && \
         chroot \"$0\" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {BROWSER_PACKAGES} && \
         chroot \"$0\" env DEBIAN_FRONTEND=noninteractive apt-get upgrade -y && \
         chroot \"$0\" apt-get clean && rm -rf \"$0\"/var/lib/apt/lists/*"
    );
    stream(
        &unshare,
        &[
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "--fork".into(),
            "sh".into(),
            "-c".into(),
            script,
            rootfs.display().to_string(),
        ],
        None,
        progress,
    )
    .await?;
    // The build machine's resolver stays out of the image (runtimes mount their own).
    std::fs::write(&resolv, "")
        .map_err(|e| format!("cannot reset the base's /etc/resolv.conf: {e}"))
}

/// Runs a command, passing each output line to `progress`; fails with the last lines.
async fn stream(
    program: &Path,
    args: &[String],
    stdin: Option<Stdio>,
    progress: &mut dyn Progress,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(super::host_tool_env())
        .stdin(stdin.unwrap_or_else(Stdio::null))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("{} has no output pipes", program.display()));
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for reader in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    while let Some(line) = rx.recv().await {
        progress.detail(&line);
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("{} failed: {e}", program.display()))?;
    if status.success() {
        Ok(())
    } else if tail
        .iter()
        .any(|l| l.to_ascii_lowercase().contains("no space left on device"))
    {
        Err(format!(
            "`{} {}` failed: the disk is full (no space left on device). Free some space \
             (`{} system df` shows what images take; `{} image prune` removes unused ones; \
             `df -h` shows the disks) and build again. Its last lines: {}",
            program.display(),
            args.first().map(String::as_str).unwrap_or(""),
            program.display(),
            program.display(),
            tail.join(" | ")
        ))
    } else {
        Err(format!(
            "`{} {}` failed ({status}): {}",
            program.display(),
            args.first().map(String::as_str).unwrap_or(""),
            tail.join(" | ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a build reports.
    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl Progress for Recorded {
        fn step(&mut self, n: usize, total: usize, title: &str, _: &str) {
            self.0.push(format!("step {n}/{total} {title}"));
        }
        fn note(&mut self, line: &str) {
            self.0.push(format!("note {line}"));
        }
        fn detail(&mut self, line: &str) {
            self.0.push(format!("detail {line}"));
        }
        fn done(&mut self) {
            self.0.push("done".into());
        }
    }

    #[tokio::test]
    async fn a_tools_lines_are_details_and_its_failure_quotes_the_last_ones() {
        let mut seen = Recorded::default();
        let sh = std::path::PathBuf::from("/bin/sh");
        let ok = stream(
            &sh,
            &["-c".into(), "echo one; echo two".into()],
            None,
            &mut seen,
        )
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(seen.0, ["detail one", "detail two"]);
        let failed = stream(
            &sh,
            &["-c".into(), "echo why >&2; exit 3".into()],
            None,
            &mut seen,
        )
        .await;
        let e = failed.expect_err("fails");
        assert!(e.contains("why") && e.contains("exit status: 3"), "{e}");
        let full = stream(
            &sh,
            &[
                "-c".into(),
                "echo 'write /var/lib/containers/x: no space left on device' >&2; exit 125".into(),
            ],
            None,
            &mut seen,
        )
        .await;
        let e = full.expect_err("fails");
        assert!(
            e.contains("the disk is full")
                && e.contains("image prune")
                && e.contains("/var/lib/containers/x"),
            "says the disk is full, what to do, and the tool's words: {e}"
        );
    }

    #[test]
    fn logs_get_one_line_per_step_and_terminals_a_redrawn_one() {
        let run = |terminal: bool| {
            let mut out = Vec::new();
            let mut p = TerminalProgress::new(&mut out, terminal);
            p.step(1, 3, "the Debian base image", "3 to 6 minutes");
            for i in 0..50 {
                p.detail(&format!("I: Retrieving package {i}"));
            }
            p.note("using the local base image");
            p.done();
            drop(p);
            String::from_utf8(out).expect("utf-8")
        };
        let log = run(false);
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            [
                "[1/3] the Debian base image (usually 3 to 6 minutes)",
                "      using the local base image",
                "[1/3] the Debian base image: done in 0 s",
            ],
            "no tool lines in a log: {log}"
        );
        let tty = run(true);
        assert_eq!(tty.lines().count(), 3, "redrawn in place: {tty:?}");
        assert!(
            tty.contains("\r\x1b[2K      ⠙ 0:00 I: Retrieving package 0"),
            "{tty:?}"
        );
    }
}
