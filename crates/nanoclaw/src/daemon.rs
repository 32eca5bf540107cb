//! `nanoclaw run`: wires the modules together, starts them, and stops them in order.
//!
//! Start: layout → single-instance lock → store → HTTP token → `web:main` registration →
//! delivery worker → HTTP server → recovery of pending messages.
//! Stop: stop accepting HTTP → close runs (grace period) → flush the outbox → release.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::channels::web::{MAIN_JID, WebChannel};
use crate::channels::{Channel, ChannelSet};
use crate::config::{Config, Secrets};
use crate::delivery::Delivery;
use crate::http::{self, HttpState};
use crate::ipc::IpcContext;
use crate::layout::{GroupFolder, Layout};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, RunTokens};
use crate::queue::{GroupQueue, RetryPolicy};
use crate::router::Router;
use crate::router::run::RunLoop;
use crate::router::sender_allowlist::SenderPolicy;
use crate::runner::AgentRunner;
use crate::store::{ChatMeta, RegisteredGroup, Store, StoreError};

/// How long runs get to finish after SIGINT/SIGTERM before they are stopped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct DaemonOptions {
    pub config: Config,
    /// Used only by the credential proxy (and, later, channel adapters).
    pub secrets: Secrets,
    pub runner: Arc<dyn AgentRunner>,
    /// The proxy's live run tokens, shared with the runner that issues them.
    pub tokens: Arc<RunTokens>,
    /// Channels besides the built-in web channel.
    pub channels: Vec<Arc<dyn Channel>>,
}

/// A started daemon. Dropping it without [`RunningDaemon::shutdown`] leaves its tasks
/// running until the runtime ends.
pub struct RunningDaemon {
    pub http_addr: SocketAddr,
    /// The credential proxy's loopback address.
    pub proxy_addr: SocketAddr,
    pub layout: Layout,
    pub http_token: String,
    shutdown_tx: watch::Sender<bool>,
    delivery_stop_tx: watch::Sender<bool>,
    queue: Arc<GroupQueue>,
    runner: Arc<dyn AgentRunner>,
    http_task: JoinHandle<()>,
    ipc_task: JoinHandle<()>,
    scheduler_task: JoinHandle<()>,
    channel_tasks: Vec<JoinHandle<()>>,
    channel_stop_tx: watch::Sender<bool>,
    delivery_task: JoinHandle<()>,
    _lock: File,
}

/// Lifts the soft limit on open files to the hard limit: every proxied model stream, SSE
/// client and sandbox pipe is a descriptor, and the usual soft limit of 1024 is below
/// the proxy's connection cap. Sandboxes set their own, lower limit.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("cannot raise the open-file limit: {e}");
        }
    }
    tracing::debug!(limit = ?getrlimit(Resource::Nofile).current, "open-file limit");
}

pub async fn start(options: DaemonOptions) -> Result<RunningDaemon> {
    let DaemonOptions {
        config,
        secrets,
        runner,
        tokens,
        channels: extra_channels,
    } = options;
    let config = Arc::new(config);
    let layout = Layout::new(&config.root);
    layout.create().with_context(|| {
        format!(
            "cannot create the nanoclaw layout under {}",
            config.root.display()
        )
    })?;
    let lock = acquire_lock(&layout)?;
    raise_open_file_limit();
    for path in layout
        .tighten_env_files()
        .context("protecting the .env files")?
    {
        tracing::warn!(path = %path.display(), "secrets file was readable by others; made it owner-only (0600)");
    }

    let store = {
        let (path, name) = (layout.db_path(), config.assistant_name.clone());
        tokio::task::spawn_blocking(move || Store::open(&path, &name))
            .await
            .context("opening the store")??
    };
    let store = Arc::new(store);
    let http_token = layout
        .load_or_create_http_token()
        .context("preparing the HTTP token")?;
    ensure_main_group(&store, &layout, &config).await?;

    let senders = Arc::new(SenderPolicy::new(config.sender_allowlist_path()));
    {
        let senders = Arc::clone(&senders);
        let state = tokio::task::spawn_blocking(move || senders.current()).await?;
        tracing::info!("{}", state.describe());
    }
    tracing::info!("{}", runner.describe());

    let mut all_channels: Vec<Arc<dyn Channel>> = vec![Arc::new(WebChannel)];
    all_channels.extend(extra_channels);
    let channels = ChannelSet::new(all_channels);
    let metrics = Arc::new(Metrics::default());
    let (events_tx, _) = broadcast::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Delivery stops last, after runs have closed, so their final replies go out.
    let (delivery_stop_tx, delivery_stop_rx) = watch::channel(false);
    // Channels stop after delivery's last pass, so they can still send its replies.
    let (channel_stop_tx, channel_stop_rx) = watch::channel(false);

    let proxy = Proxy::start(
        &config,
        &secrets,
        tokens,
        Some(Arc::clone(&store)),
        shutdown_rx.clone(),
    )
    .await
    .context("starting the credential proxy")?;
    let transcriber = crate::transcribe::Transcriber::new(
        config.transcribe_url.as_deref(),
        &config.transcribe_model,
        secrets.transcribe_api_key.clone(),
    )
    .map_err(anyhow::Error::msg)
    .context("setting up voice transcription")?
    .map(Arc::new);
    drop(secrets);
    let delivery = Delivery::new(
        Arc::clone(&store),
        channels.clone(),
        events_tx.clone(),
        Arc::clone(&metrics),
    );
    let ipc = Arc::new(IpcContext {
        store: Arc::clone(&store),
        layout: layout.clone(),
        tz: config.zone.tz.clone(),
        assistant_name: config.assistant_name.clone(),
        channels: channels.clone(),
        delivery: Some(Arc::clone(&delivery)),
        tasks_changed: Arc::new(tokio::sync::Notify::new()),
        guard: crate::ipc::IpcGuard::new(crate::ipc::IpcLimits {
            min_task_interval: config.min_task_interval,
            min_free_disk_bytes: config.min_free_disk_bytes,
            ..Default::default()
        }),
    });
    let ipc_task = tokio::spawn(crate::ipc::watch(Arc::clone(&ipc), shutdown_rx.clone()));
    tokio::spawn(crate::ipc::files::sweep_hourly(
        Arc::clone(&store),
        layout.clone(),
        shutdown_rx.clone(),
    ));
    let run_loop = RunLoop {
        store: Arc::clone(&store),
        runner: Arc::clone(&runner),
        senders: Arc::clone(&senders),
        delivery: Arc::clone(&delivery),
        channels: channels.clone(),
        config: Arc::clone(&config),
        metrics: Arc::clone(&metrics),
        ipc: Arc::clone(&ipc),
        typing_wanted: Arc::default(),
    };
    let queue = GroupQueue::new(
        config.max_concurrent_containers,
        RetryPolicy::new(config.retry_base),
        Arc::new(run_loop),
    );
    let scheduler_task = tokio::spawn(
        crate::scheduler::Scheduler {
            store: Arc::clone(&store),
            queue: Arc::clone(&queue),
            changed: Arc::clone(&ipc.tasks_changed),
        }
        .run(shutdown_rx.clone()),
    );
    let router = Arc::new(
        Router::new(
            Arc::clone(&store),
            Arc::clone(&senders),
            Arc::clone(&queue),
            config.default_trigger(),
            Arc::clone(&metrics),
        )
        .with_groups_dir(layout.groups_dir(), config.min_free_disk_bytes)
        .with_transcriber(transcriber),
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.http_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}; is another program using it? Set NANOCLAW_HTTP_PORT to a free port",
                config.http_port
            )
        })?;
    let http_addr = listener.local_addr()?;
    let app = http::app(Arc::new(HttpState {
        token: http_token.clone(),
        addr: http_addr,
        sessions: Arc::default(),
        config: Arc::clone(&config),
        store: Arc::clone(&store),
        router: Arc::clone(&router),
        queue: Arc::clone(&queue),
        senders,
        runner: Arc::clone(&runner),
        channels: channels.clone(),
        events: events_tx,
        metrics,
        started: Instant::now(),
        shutdown: shutdown_rx.clone(),
        tasks_changed: Arc::clone(&ipc.tasks_changed),
    }));
    let mut http_shutdown = shutdown_rx.clone();
    let http_task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    let delivery_task = tokio::spawn(Arc::clone(&delivery).run(delivery_stop_rx));
    let channel_tasks: Vec<JoinHandle<()>> = channels
        .iter()
        .map(|channel| {
            let host: Arc<dyn crate::channels::ChannelHost> = Arc::clone(&router) as _;
            tokio::spawn(Arc::clone(channel).run(host, channel_stop_rx.clone()))
        })
        .collect();

    write_daemon_info(&layout, http_addr)?;
    tracing::info!(http = %http_addr, root = %config.root.display(), assistant = %config.assistant_name, "nanoclaw is running");

    router
        .recover()
        .await
        .context("recovering pending messages")?;
    // Replies committed before a crash but not yet delivered.
    delivery.notify();

    Ok(RunningDaemon {
        http_addr,
        proxy_addr: proxy.tcp_addr,
        layout,
        http_token,
        shutdown_tx,
        delivery_stop_tx,
        queue,
        runner,
        http_task,
        ipc_task,
        scheduler_task,
        channel_tasks,
        channel_stop_tx,
        delivery_task,
        _lock: lock,
    })
}

impl RunningDaemon {
    /// Stops everything in order; returns when it is safe to exit.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        self.queue.shutdown(SHUTDOWN_GRACE).await;
        self.runner.finish().await;
        let _ = self.http_task.await;
        // IPC files written after this are still on disk; the next start processes them.
        let _ = self.ipc_task.await;
        let _ = self.scheduler_task.await;
        let _ = self.delivery_stop_tx.send(true);
        let _ = self.delivery_task.await;
        let _ = self.channel_stop_tx.send(true);
        for task in self.channel_tasks {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(self.layout.daemon_info_path());
        tracing::info!("stopped");
    }
}

/// The descriptor holding the single-instance lock, and the lock file's device and
/// inode (a descriptor number is reused once closed), for [`close_lock_in_child`].
static LOCK_FD: AtomicI32 = AtomicI32::new(-1);
static LOCK_DEV: AtomicU64 = AtomicU64::new(0);
static LOCK_INO: AtomicU64 = AtomicU64::new(0);

/// Closes the single-instance lock in a child between fork and exec. A child keeps its
/// copy until exec even with close-on-exec, and one that is slow there (joining a
/// cgroup while the daemon is being killed can take a while) would hold the lock past
/// the daemon's death and make a restart fail. Only `fstat` and `close`, both
/// async-signal-safe; a descriptor that is not the lock file (any more) is left alone.
pub fn close_lock_in_child() {
    let fd = LOCK_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: the number is only borrowed for the fstat; it is closed below only if it
    // is still the lock file, which nothing else in the forked child uses.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let is_lock = rustix::fs::fstat(borrowed).is_ok_and(|st| {
        st.st_dev == LOCK_DEV.load(Ordering::Relaxed)
            && st.st_ino == LOCK_INO.load(Ordering::Relaxed)
    });
    if is_lock {
        // SAFETY: see above.
        unsafe { rustix::io::close(fd) };
    }
}

/// One daemon per root: two would process every message twice.
fn acquire_lock(layout: &Layout) -> Result<File> {
    let path = layout.daemon_lock_path();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::MetadataExt;
            if let Ok(meta) = file.metadata() {
                LOCK_DEV.store(meta.dev(), Ordering::Relaxed);
                LOCK_INO.store(meta.ino(), Ordering::Relaxed);
                LOCK_FD.store(file.as_raw_fd(), Ordering::Relaxed);
            }
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let who = std::fs::read_to_string(layout.daemon_info_path()).unwrap_or_default();
            Err(anyhow!(
                "another nanoclaw is already running with root {} ({}); stop it first",
                layout.root().display(),
                who.trim()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow!("cannot lock {}: {e}", path.display())),
    }
}

fn write_daemon_info(layout: &Layout, http_addr: SocketAddr) -> Result<()> {
    let info = json!({
        "pid": std::process::id(),
        "http": http_addr.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": crate::clock::now(),
    });
    let path = layout.daemon_info_path();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, info.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// First start: make `web:main` the main group (folder `main`) unless a main group exists.
async fn ensure_main_group(store: &Arc<Store>, layout: &Layout, config: &Config) -> Result<()> {
    let trigger = config.default_trigger();
    let (main, groups) = store
        .call(move |s| {
            if let Some(main) = s.main_group()? {
                return Ok::<_, StoreError>((main, s.registered_groups()?));
            }
            let now = crate::clock::now();
            s.upsert_chat(&ChatMeta {
                jid: MAIN_JID.into(),
                name: Some("Main".into()),
                timestamp: now.clone(),
                channel: Some("web".into()),
                is_group: Some(false),
            })?;
            let main = RegisteredGroup {
                jid: MAIN_JID.into(),
                name: "Main".into(),
                folder: "main".into(),
                trigger_pattern: trigger,
                added_at: now,
                container_config: None,
                requires_trigger: false,
                is_main: true,
            };
            s.register_group(&main)?;
            tracing::info!("registered {MAIN_JID} as the main group");
            Ok((main, s.registered_groups()?))
        })
        .await
        .context("registering the main group")?;
    tracing::info!(main = %main.jid, groups = groups.len(), "groups loaded");
    for group in groups {
        match GroupFolder::parse(&group.folder) {
            Ok(folder) => layout
                .create_group_dirs(&folder)
                .with_context(|| format!("creating the folders of group {}", group.jid))?,
            Err(e) => tracing::warn!(chat_jid = %group.jid, "group will not run: {e}"),
        }
    }
    Ok(())
}
