//! `nanoclaw sandbox exec` and `nanoclaw image build`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;

use super::{open_existing_store, runtime};
use crate::config::{Config, RuntimeKind};
use crate::layout::Layout;
use crate::sandbox::image::ImageState;
use crate::sandbox::oci::{Flavor, Oci};
use crate::sandbox::{self, SandboxBackend};

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run CMD in a sandbox built exactly as the group's agent runs are, and exit with
    /// its status: the way to see what an agent of that group can see
    Exec {
        /// The group's folder (see `nanoclaw groups list`)
        #[arg(long)]
        group: String,
        /// Sandbox backend to use [default: CONTAINER_RUNTIME, else auto-detect]
        #[arg(long, value_parser = parse_runtime)]
        runtime: Option<RuntimeKind>,
        /// The command and its arguments
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the agent image for podman/docker (only if missing or stale, unless --force)
    Build {
        #[arg(long, value_parser = parse_runtime)]
        runtime: Option<RuntimeKind>,
        /// Rebuild even if the image is up to date
        #[arg(long)]
        force: bool,
    },
}

fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    match s {
        "docker" => Ok(RuntimeKind::Docker),
        "podman" => Ok(RuntimeKind::Podman),
        "bwrap" | "bubblewrap" => Ok(RuntimeKind::Bwrap),
        other => Err(format!(
            "`{other}` is not a sandbox backend; use bwrap, podman or docker"
        )),
    }
}

/// The backend for `--runtime`, else the configured or auto-detected one.
async fn choose_backend(
    config: &Config,
    runtime: Option<RuntimeKind>,
) -> Result<Arc<dyn SandboxBackend>> {
    match runtime {
        Some(kind) => {
            let backend = sandbox::backend(kind, config);
            backend
                .probe()
                .await
                .map_err(|why| anyhow!("{} cannot be used here: {why}", kind.name()))?;
            Ok(backend)
        }
        None => sandbox::select(config).await.map_err(|e| anyhow!(e)),
    }
}

/// Makes sure an OCI backend's image is current, showing progress on stderr. Returns
/// the state it was in before (`None` for bwrap, which needs no image).
async fn ensure_image(
    config: &Config,
    kind: RuntimeKind,
    force: bool,
) -> Result<Option<ImageState>> {
    let flavor = match kind {
        RuntimeKind::Podman => Flavor::Podman,
        RuntimeKind::Docker => Flavor::Docker,
        RuntimeKind::Bwrap => return Ok(None),
    };
    let oci = Oci::new(flavor, config);
    let mut progress = sandbox::image::TerminalProgress::stderr();
    sandbox::image::ensure(&oci, config, force, &mut progress)
        .await
        .map(Some)
        .map_err(|e| anyhow!("cannot build the agent image: {e}"))
}

pub fn sandbox(config: &Config, command: SandboxCommand) -> Result<ExitCode> {
    let SandboxCommand::Exec {
        group: folder,
        runtime: runtime_kind,
        command,
    } = command;
    // Denials (egress, proxy limits) are logged like the daemon's, on stderr.
    super::init_stderr_logging(config, "warn");
    let store = open_existing_store(config)?;
    let group = store.registered_group_by_folder(&folder)?.ok_or_else(|| {
        anyhow!("no registered group uses folder `{folder}`; `nanoclaw groups list` shows them")
    })?;
    let layout = Layout::new(&config.root);
    layout.create().context("preparing the root layout")?;
    runtime()?.block_on(async move {
        let backend = choose_backend(config, runtime_kind).await?;
        ensure_image(config, backend.kind(), false).await?;
        let all_groups = store.registered_groups()?;
        let prepared = sandbox::prepare(&layout, &group, &all_groups, backend.kind(), |f| {
            store
                .sandbox_host_id(f, config.sandbox_id_base)
                .map_err(|e| e.to_string())
        })?;
        // The same sockets an agent run gets; the credential proxy of this process
        // answers every model request with a 401 (no agent runs here).
        let tokens = Arc::new(crate::proxy::RunTokens::default());
        let (running_tx, running_rx) = tokio::sync::watch::channel(false);
        crate::proxy::serve_without_model(&tokens, running_rx.clone());
        let services = sandbox::services::RunServices::open(
            &layout,
            &prepared,
            &tokens,
            "sandbox-exec",
            crate::proxy::RunBudget::default(),
            running_rx,
        )
        .map_err(|e| anyhow!(e))?;
        let (spec, plan) = sandbox::group_spec(
            config,
            &layout,
            &prepared,
            &services.dir,
            services.token(),
            command,
            std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        );
        for rejection in &plan.rejected {
            eprintln!("warning: {rejection}");
        }
        eprintln!("nanoclaw: {}", prepared.describe(backend.kind()));
        let mut sandbox = backend.command(&spec).await?;
        sandbox.command.kill_on_drop(true);
        let mut running = sandbox
            .spawn()
            .await
            .with_context(|| format!("cannot start the {} sandbox", backend.kind().name()))?;
        let child = &mut running.child;
        let code = tokio::select! {
            status = child.wait() => {
                let status = status.context("cannot wait for the sandbox")?;
                match status.code() {
                    Some(code) => code,
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        128 + status.signal().unwrap_or(0)
                    }
                }
            }
            // Ctrl-C or SIGTERM ends the sandbox too, not just its client process.
            _ = tokio::signal::ctrl_c() => {
                let _ = child.start_kill();
                130
            }
            _ = terminated() => {
                let _ = child.start_kill();
                143
            }
        };
        if running.oom_killed() {
            eprintln!(
                "nanoclaw: the sandbox ran out of its {} MiB of memory and a process in it was killed",
                prepared.limits.memory_bytes >> 20
            );
        }
        backend.stop(&spec.name).await;
        drop(running);
        drop(services);
        drop(running_tx);
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    })
}

/// Resolves on SIGTERM (never, if it cannot be watched).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

pub fn image(config: &Config, command: ImageCommand) -> Result<ExitCode> {
    let ImageCommand::Build {
        runtime: kind,
        force,
    } = command;
    let kind = match kind.or(config.container_runtime) {
        Some(RuntimeKind::Bwrap) => bail!("bwrap needs no image; use --runtime podman or docker"),
        Some(k) => k,
        None if sandbox::which("podman").is_some() => RuntimeKind::Podman,
        None if sandbox::which("docker").is_some() => RuntimeKind::Docker,
        None => bail!(
            "neither podman nor docker is installed; install podman (`apt install podman runc`)"
        ),
    };
    Layout::new(&config.root)
        .create()
        .context("preparing the root layout")?;
    let before = runtime()?.block_on(ensure_image(config, kind, force))?;
    if before == Some(ImageState::Current) && !force {
        println!("{} is up to date.", config.container_image);
    } else {
        println!("{} is built.", config.container_image);
    }
    Ok(ExitCode::SUCCESS)
}
