//! The `nanoclaw` command line (SPEC §14). Every command takes `--root DIR`
//! (default: `$NANOCLAW_ROOT`, else the current directory).

mod chat;
mod groups;
mod sandbox_cmd;
mod service;
pub(crate) mod setup;
mod status;
mod tasks;
mod ui;
mod usage;
#[cfg(feature = "whatsapp")]
mod whatsapp;

pub(crate) use usage::{
    daily_budgets, row_json as usage_row_json, totals as usage_totals, window as usage_window,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, Secrets};
use crate::daemon::{self, DaemonOptions};
use crate::layout::Layout;
use crate::proxy::RunTokens;
use crate::runner::{AgentRunner, UnavailableRunner};
use crate::sandbox::runner::SandboxRunner;
use crate::sandbox::{self, Identity};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "nanoclaw",
    version,
    about = "A personal AI assistant whose agents run in sandboxes that see only what they were given."
)]
pub struct Cli {
    /// Root directory holding .env, store/, groups/, data/ and logs/
    /// [default: $NANOCLAW_ROOT, else the current directory]
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the assistant: channels, router, queue, HTTP server (until SIGINT/SIGTERM)
    Run,
    /// First run: check the sandboxes, the model credential and each channel, save .env
    Setup(setup::SetupArgs),
    /// Show whether the daemon is running and what it is doing
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Sign in to the web app: print a one-time link (and open a browser when there is one)
    Ui {
        /// Only print the link
        #[arg(long)]
        print: bool,
    },
    /// Chat with the running assistant from this terminal
    Chat {
        /// The web chat to talk in
        #[arg(long, default_value = "web:main")]
        jid: String,
        /// Your display name in the chat [default: $USER]
        #[arg(long)]
        name: Option<String>,
    },
    /// Check configuration, store and allowlists, and say what is wrong
    Doctor {
        /// Do not ask the model API whether it accepts the credential
        #[arg(long)]
        offline: bool,
    },
    /// Registered groups (chats the assistant works in)
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Scheduled tasks
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Sandboxes: see exactly what a group's agent sees
    Sandbox {
        #[command(subcommand)]
        command: sandbox_cmd::SandboxCommand,
    },
    /// The agent image for podman and docker
    Image {
        #[command(subcommand)]
        command: sandbox_cmd::ImageCommand,
    },
    /// Run nanoclaw as a service (systemd; launchd on macOS) that starts at boot or login
    Service {
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
    /// WhatsApp: link this program as a device of your account, or unlink it
    #[cfg(feature = "whatsapp")]
    Whatsapp {
        #[command(subcommand)]
        command: whatsapp::WhatsAppCommand,
    },
    /// Model tokens used, per group and day
    Usage {
        /// How many days back, today included
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    // Everything nanoclaw creates (store, logs, memory, sessions) is private to its user;
    // as root, the group keeps read access (see `Layout::share_with_sandbox_user`).
    let umask = if Identity::daemon_is_root() {
        0o027
    } else {
        0o077
    };
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let env = process_env();
    let root = resolve_root(cli.root, &env)?;
    let (config, secrets) = Config::load(&root, &env).context("invalid configuration")?;
    match cli.command {
        Command::Run => run(config, secrets),
        Command::Setup(args) => setup::setup(&config, &env, args),
        Command::Status { json } => status::status(&config, json),
        Command::Chat { jid, name } => chat::chat(&config, jid, name),
        Command::Doctor { offline } => status::doctor(&config, &secrets, offline),
        Command::Groups { command } => groups::run(&config, command),
        Command::Tasks { command } => tasks::run(&config, command),
        Command::Sandbox { command } => sandbox_cmd::sandbox(&config, command),
        Command::Image { command } => sandbox_cmd::image(&config, command),
        Command::Usage { days, json } => usage::usage(&config, days, json),
        Command::Service { command } => service::run(&config, &env, command),
        Command::Ui { print } => ui::ui(&config, &env, print),
        #[cfg(feature = "whatsapp")]
        Command::Whatsapp { command } => whatsapp::run(&config, command),
    }
}

/// The process environment, as UTF-8 (non-UTF-8 variables are not ours).
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn resolve_root(flag: Option<PathBuf>, env: &HashMap<String, String>) -> Result<PathBuf> {
    let root = match flag {
        Some(dir) => dir,
        None => match env.get("NANOCLAW_ROOT").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_dir().context("cannot determine the current directory")?,
        },
    };
    let root = if root.is_absolute() {
        root
    } else {
        std::env::current_dir()
            .context("cannot determine the current directory")?
            .join(root)
    };
    if root.exists() && !root.is_dir() {
        bail!("the root {} exists but is not a directory", root.display());
    }
    Ok(root)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Opens the store of an existing root (for commands that only read or edit it).
fn open_existing_store(config: &Config) -> Result<Store> {
    let layout = Layout::new(&config.root);
    let path = layout.db_path();
    if !path.exists() {
        bail!(
            "no nanoclaw store at {}; start the assistant once with `nanoclaw run --root {}`, or pass the right --root",
            path.display(),
            config.root.display()
        );
    }
    Ok(Store::open(&path, &config.assistant_name)?)
}

fn run(config: Config, secrets: Secrets) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.root)
        .with_context(|| format!("cannot create the root {}", config.root.display()))?;
    init_logging(&config)?;
    let layout = Layout::new(&config.root);
    layout.create().context("creating the root layout")?;
    runtime()?.block_on(async move {
        let tokens = Arc::new(RunTokens::default());
        let runner: Arc<dyn AgentRunner> = match sandbox::select(&config).await {
            Ok(backend) => {
                tracing::info!(backend = backend.kind().name(), "sandbox backend selected");
                let runner = Arc::new(SandboxRunner::new(
                    Arc::new(config.clone()),
                    backend,
                    Arc::clone(&tokens),
                ));
                runner.remove_orphans().await;
                let preparing = Arc::clone(&runner);
                tokio::spawn(async move {
                    if let Err(e) = preparing.prepare().await {
                        tracing::error!("the sandbox is not ready yet (runs will try again): {e}");
                    }
                });
                runner
            }
            Err(e) => {
                tracing::error!("{e}");
                Arc::new(UnavailableRunner::new(e))
            }
        };
        let configured = crate::channels::configured(&config, &secrets);
        for (name, off) in &configured.off {
            match off {
                crate::channels::ChannelOff::NotConfigured(hint) => {
                    tracing::warn!("{name} is off: {hint}")
                }
                crate::channels::ChannelOff::Invalid(why) => {
                    tracing::error!("{name} is off: {why}")
                }
            }
        }
        let channels = configured.channels;
        // Model credentials go to the credential proxy only.
        let daemon = daemon::start(DaemonOptions {
            config,
            secrets,
            runner,
            tokens,
            channels,
        })
        .await?;
        wait_for_stop_signal().await?;
        daemon.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Logs of a short-lived command: stderr only, `NANOCLAW_LOG` if set, else `default`.
pub(crate) fn init_stderr_logging(config: &Config, default: &str) {
    use tracing_subscriber::EnvFilter;
    let chosen = if config.log_filter_set {
        config.log_filter.as_str()
    } else {
        default
    };
    let filter = EnvFilter::try_new(chosen).unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Logs go to stderr and to `logs/nanoclaw.log` (appended).
fn init_logging(config: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let logs = Layout::new(&config.root).logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let file_path = logs.join("nanoclaw.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file_path)
        .with_context(|| format!("cannot open {}", file_path.display()))?;
    let filter = EnvFilter::try_new(&config.log_filter).with_context(|| {
        format!(
            "NANOCLAW_LOG/RUST_LOG `{}` is not a valid log filter",
            config.log_filter
        )
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr.and(Arc::new(file)))
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(())
}

/// Reads the token and address of the running daemon, if one runs on this root.
pub(crate) struct DaemonEndpoint {
    pub base_url: String,
    pub token: String,
}

pub(crate) fn daemon_endpoint(config: &Config) -> Result<DaemonEndpoint> {
    let layout = Layout::new(&config.root);
    let token = std::fs::read_to_string(layout.http_token_path())
        .with_context(|| {
            format!(
                "cannot read {}; is the assistant running with this --root ({})?",
                layout.http_token_path().display(),
                config.root.display()
            )
        })?
        .trim()
        .to_string();
    let info: Option<serde_json::Value> = std::fs::read_to_string(layout.daemon_info_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let addr = info
        .as_ref()
        .and_then(|i| i.get("http"))
        .and_then(|h| h.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("127.0.0.1:{}", config.http_port));
    Ok(DaemonEndpoint {
        base_url: format!("http://{addr}"),
        token,
    })
}

/// Left-aligned text table.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Shortens text for one table cell.
pub(crate) fn cell(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let head: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{head}…")
    }
}
