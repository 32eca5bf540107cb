//! IPC from agents (SPEC §10): request files in `data/ipc/{folder}/messages/` and
//! `data/ipc/{folder}/tasks/`, watched for every group folder whether or not a sandbox is
//! running.
//!
//! - The source group is the folder the file was found in, never anything in the file.
//! - Only complete files count: `*.json` names not starting with `.` (writers create a
//!   temp name, then rename). Files are read without following symlinks, only if they are
//!   regular files of at most [`MAX_FILE_BYTES`].
//! - Processed files are deleted; a denied request is logged (source, operation, target)
//!   and deleted; a file that cannot be parsed or carried out moves to
//!   `data/ipc/errors/{folder}-{name}` with a `.reason` file next to it; when the store
//!   fails the file stays and is tried again.
//! - inotify wakes the worker; a sweep every [`SWEEP_EVERY`] catches anything missed
//!   (e.g. an inotify queue overflow).
//! - Agents are not trusted to be polite: at most [`FILES_PER_PASS`] files of a folder
//!   are handled per pass (the rest in the next pass, after the other folders), chat
//!   messages are limited per group per minute, rejected files are copied (never moved:
//!   the agent keeps no handle on anything under `errors/`) and capped per folder.

pub mod authorize;
pub mod files;
pub mod process;
pub mod snapshot;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use nanoclaw_protocol::ipc::IpcRequest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::{Notify, watch};

use crate::channels::ChannelSet;
use crate::delivery::Delivery;
use crate::layout::{GroupFolder, Layout};
use crate::store::Store;
use authorize::Source;
use process::IpcError;

/// Larger request files are refused unread.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// How often every folder is scanned regardless of inotify.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
const KINDS: [&str; 2] = ["messages", "tasks"];
/// Files of one folder and kind handled per pass; more wait for the next pass.
pub const FILES_PER_PASS: usize = 50;
/// Rejected files kept per folder in `data/ipc/errors/`; later ones are only logged.
pub const MAX_ERRORS_PER_FOLDER: usize = 100;
/// How much of a rejected file is kept for inspection.
const MAX_ERROR_COPY_BYTES: usize = 64 * 1024;

/// Limits on what one group's agent may ask for.
#[derive(Debug, Clone)]
pub struct IpcLimits {
    /// Chat messages a group may send per minute; more are denied.
    pub messages_per_minute: usize,
    /// The shortest interval a recurring task may have.
    pub min_task_interval: Duration,
    /// Tasks (active or paused) a group may have at once.
    pub max_tasks_per_group: usize,
    /// Tasks a group may create per hour (`once` tasks end, so the count above alone
    /// would not stop a chain of them).
    pub tasks_per_hour: usize,
    /// The longest text an IPC chat message may have, in bytes.
    pub max_message_bytes: usize,
    /// Free disk space a copied file (`send_file`) must leave (`NANOCLAW_MIN_FREE_DISK_MB`).
    pub min_free_disk_bytes: u64,
}

impl Default for IpcLimits {
    fn default() -> Self {
        IpcLimits {
            messages_per_minute: 30,
            min_task_interval: Duration::from_secs(60),
            max_tasks_per_group: 50,
            tasks_per_hour: 30,
            max_message_bytes: 16 * 1024,
            min_free_disk_bytes: 512 << 20,
        }
    }
}

/// The limits and the state needed to enforce them.
#[derive(Default)]
pub struct IpcGuard {
    pub limits: IpcLimits,
    /// When each group's recent chat messages were sent.
    sent: std::sync::Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>,
    /// When each group's recent tasks were created.
    created: std::sync::Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>,
    /// Rejected files kept per group since start.
    rejected: std::sync::Mutex<HashMap<String, usize>>,
    /// Groups whose request folders could not be emptied (logged once).
    stuck: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl IpcGuard {
    pub fn new(limits: IpcLimits) -> IpcGuard {
        IpcGuard {
            limits,
            ..Default::default()
        }
    }

    /// Counts one chat message from `folder`; false if it is over the per-minute limit.
    pub fn allow_message(&self, folder: &str) -> bool {
        within(
            &self.sent,
            folder,
            Duration::from_secs(60),
            self.limits.messages_per_minute,
        )
    }

    /// Counts one new task of `folder`; false if it is over the per-hour limit.
    pub fn allow_task(&self, folder: &str) -> bool {
        within(
            &self.created,
            folder,
            Duration::from_secs(3600),
            self.limits.tasks_per_hour,
        )
    }

    /// Counts one kept rejected file of `folder`; false once the limit is reached.
    fn count_rejected(&self, folder: &str) -> bool {
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        let n = rejected.entry(folder.to_string()).or_default();
        *n += 1;
        *n <= MAX_ERRORS_PER_FOLDER
    }

    /// True the first time `folder` is found stuck.
    fn first_stuck(&self, folder: &str) -> bool {
        self.stuck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(folder.to_string())
    }
}

/// A sliding-window counter: records one event for `key` unless `max` happened within
/// `window`.
fn within(
    log: &std::sync::Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>,
    key: &str,
    window: Duration,
    max: usize,
) -> bool {
    let now = std::time::Instant::now();
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    let times = log.entry(key.to_string()).or_default();
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
    if times.len() >= max {
        return false;
    }
    times.push_back(now);
    true
}
/// What IPC processing needs from the daemon.
pub struct IpcContext {
    pub store: Arc<Store>,
    pub layout: Layout,
    pub tz: TimeZone,
    pub assistant_name: String,
    pub channels: ChannelSet,
    /// Woken when a message was queued (absent in tests that do not deliver).
    pub delivery: Option<Arc<Delivery>>,
    /// Woken whenever a task is created or changed (the scheduler listens).
    pub tasks_changed: Arc<Notify>,
    pub guard: IpcGuard,
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    Done(String),
    Denied(String),
    /// Moved to `data/ipc/errors/` for this reason.
    Rejected(String),
    /// Left in place to be tried again.
    Kept(String),
}

impl IpcContext {
    fn ipc_root(&self) -> PathBuf {
        self.layout.data_dir().join("ipc")
    }

    /// Who `folder` is: main only if it is the registered main group's folder.
    fn source(&self, folder: &str) -> Result<Source, IpcError> {
        let main = self
            .store
            .main_group()
            .map_err(|e| IpcError::Retry(e.to_string()))?;
        Ok(Source {
            folder: folder.to_string(),
            is_main: main.is_some_and(|m| m.folder == folder),
        })
    }

    /// Processes complete request files of every group folder (up to
    /// [`FILES_PER_PASS`] per folder and kind).
    pub fn process_all(&self) -> Vec<(String, String, FileOutcome)> {
        let mut out = Vec::new();
        for folder in self.group_folders() {
            out.extend(self.process_folder(&folder));
        }
        out
    }

    /// The folders under `data/ipc/`, sorted.
    fn group_folders(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.ipc_root()) else {
            return Vec::new();
        };
        let mut folders: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        folders.sort();
        folders
    }

    /// Processes the complete request files of one folder: messages first, then tasks,
    /// each in name order (names start with a timestamp), at most [`FILES_PER_PASS`] of
    /// each. Returns `(kind, name, outcome)`.
    pub fn process_folder(&self, folder: &str) -> Vec<(String, String, FileOutcome)> {
        self.process_folder_pass(folder).0
    }

    /// [`IpcContext::process_folder`], and whether files were left for another pass.
    fn process_folder_pass(&self, folder: &str) -> (Vec<(String, String, FileOutcome)>, bool) {
        let mut out = Vec::new();
        let mut more = false;
        if GroupFolder::parse(folder).is_err() {
            // Not a group (e.g. `errors`), or a name no group can have.
            return (out, more);
        }
        let source = match self.source(folder) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(folder, "IPC: cannot tell who this folder is: {e:?}");
                return (out, more);
            }
        };
        let mut tasks_touched = false;
        for kind in KINDS {
            let dir = match open_existing_dir(&self.ipc_root(), &[folder, kind]) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(folder, kind, "IPC: cannot open the folder: {e}");
                    continue;
                }
            };
            let names = complete_files(&dir);
            let left_over = names.len() > FILES_PER_PASS;
            let mut removed = 0;
            for name in names.into_iter().take(FILES_PER_PASS) {
                let outcome = self.process_file(&dir, &source, kind, &name);
                if kind == "tasks" && matches!(outcome, FileOutcome::Done(_)) {
                    tasks_touched = true;
                }
                let stop = matches!(outcome, FileOutcome::Kept(_));
                if !stop {
                    removed += 1;
                }
                out.push((kind.to_string(), name, outcome));
                if stop {
                    // The folder cannot be emptied or the store is failing: try again
                    // at the next event or sweep, not in a tight loop.
                    break;
                }
            }
            more |= left_over && removed == FILES_PER_PASS;
        }
        if tasks_touched {
            self.refresh_task_snapshots(&source);
        }
        (out, more)
    }

    /// Rewrites `current_tasks.json` for the source and for main after a task change, so
    /// `list_tasks` in a live run sees it.
    fn refresh_task_snapshots(&self, source: &Source) {
        let mut targets = vec![(source.folder.clone(), source.is_main)];
        if let Ok(Some(main)) = self.store.main_group()
            && main.folder != source.folder
        {
            targets.push((main.folder, true));
        }
        for (folder, is_main) in targets {
            if open_existing_dir(&self.ipc_root(), &[&folder]).is_ok_and(|d| d.is_some())
                && let Err(e) = snapshot::write_tasks(self, &folder, is_main)
            {
                tracing::warn!(folder, "IPC: cannot refresh current_tasks.json: {e}");
            }
        }
    }

    /// Reads one request file, deletes it, then carries it out. Deleting first means a
    /// file the daemon cannot delete (an agent can make its folder read-only when it runs
    /// as the daemon's own user) is never carried out twice; it is left alone instead.
    fn process_file(&self, dir: &OwnedFd, source: &Source, kind: &str, name: &str) -> FileOutcome {
        let folder = source.folder.as_str();
        let bytes = read_request_file(dir, name);
        if matches!(bytes, Ok(None)) {
            return FileOutcome::Kept("gone before it was read".into());
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                if self.guard.first_stuck(folder) {
                    tracing::error!(
                        folder,
                        kind,
                        "IPC: cannot delete request files ({e}); this group's requests are ignored until its folder is writable again"
                    );
                }
                return FileOutcome::Kept(format!("cannot delete it: {e}"));
            }
        }
        let reject = |reason: String, bytes: &[u8]| {
            // Agent-written text is logged quoted (`?`) so it cannot forge log lines.
            tracing::warn!(folder, kind, file = ?name, reason = ?reason, "IPC: rejected");
            if let Err(e) = self.keep_rejected(folder, name, bytes, &reason) {
                tracing::warn!(
                    folder,
                    file = ?name,
                    "IPC: the rejected file is not kept in data/ipc/errors: {e}"
                );
            }
            FileOutcome::Rejected(reason)
        };
        let bytes = match bytes {
            Ok(Some(b)) => b,
            Ok(None) => return FileOutcome::Kept("gone before it was read".into()),
            Err(reason) => return reject(reason, &[]),
        };
        let reject = |reason: String| reject(reason, &bytes);
        let request: IpcRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return reject(format!("not a valid IPC request: {e}")),
        };
        let operation = process::operation(&request);
        if request.folder() != kind {
            return reject(format!(
                "a `{operation}` request belongs in {}/, not {kind}/",
                request.folder()
            ));
        }
        match process::process(self, source, request) {
            Ok(what) => {
                tracing::info!(source = folder, operation, done = ?what, "IPC request carried out");
                FileOutcome::Done(what)
            }
            Err(IpcError::Denied { reason, target }) => {
                tracing::warn!(
                    source = folder,
                    operation,
                    target = ?target,
                    reason = ?reason,
                    "IPC request denied"
                );
                FileOutcome::Denied(reason)
            }
            Err(IpcError::Invalid(reason)) => reject(format!("{operation}: {reason}")),
            Err(IpcError::Retry(reason)) => {
                tracing::error!(
                    source = folder,
                    operation,
                    file = ?name,
                    reason = ?reason,
                    "IPC: will retry"
                );
                // Put it back to be tried again; if even that fails, keep it for the user.
                if let Err(e) = put_back(dir, name, &bytes) {
                    return reject(format!(
                        "{operation}: {reason}; and it could not be put back to retry: {e}"
                    ));
                }
                FileOutcome::Kept(reason)
            }
        }
    }

    /// Keeps a copy of a rejected file (its first [`MAX_ERROR_COPY_BYTES`]) as
    /// `data/ipc/errors/{folder}-{name}` (never replacing an earlier one) with the reason
    /// in a `.reason` file next to it. The agent's file itself is deleted by the caller:
    /// moving it would give the agent a handle on a file outside its sandbox.
    fn keep_rejected(
        &self,
        folder: &str,
        name: &str,
        bytes: &[u8],
        reason: &str,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let errors = crate::layout::open_dir_beneath(&self.ipc_root(), &["errors"])?;
        if !self.guard.count_rejected(folder) {
            return Err(std::io::Error::other(format!(
                "{MAX_ERRORS_PER_FOLDER} rejected files of this group were kept since nanoclaw started; later ones are only logged"
            )));
        }
        let create = |target: &str| {
            rustix::fs::openat(
                &errors,
                target,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        for n in 0..MAX_ERRORS_PER_FOLDER {
            let target = if n == 0 {
                format!("{folder}-{name}")
            } else {
                format!("{folder}-{name}.{n}")
            };
            match create(&target) {
                Ok(fd) => {
                    let copied = &bytes[..bytes.len().min(MAX_ERROR_COPY_BYTES)];
                    std::fs::File::from(fd).write_all(copied)?;
                    let note = if copied.len() < bytes.len() {
                        format!(
                            "{reason}\n(only the first {} of {} bytes kept)\n",
                            copied.len(),
                            bytes.len()
                        )
                    } else {
                        format!("{reason}\n")
                    };
                    if let Ok(fd) = create(&format!("{target}.reason")) {
                        let _ = std::fs::File::from(fd).write_all(note.as_bytes());
                    }
                    return Ok(());
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(std::io::Error::other(
            "too many rejected files with this name",
        ))
    }
}

/// Writes a request back under its name (only if the agent has not reused the name).
fn put_back(dir: &OwnedFd, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    std::fs::File::from(fd).write_all(bytes)
}

/// Opens `base/parts…` without creating anything or following symlinks; `None` if a
/// part does not exist.
fn open_existing_dir(base: &std::path::Path, parts: &[&str]) -> std::io::Result<Option<OwnedFd>> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut dir = match rustix::fs::openat(rustix::fs::CWD, base, flags, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for part in parts {
        dir = match rustix::fs::openat(&dir, *part, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(std::io::Error::other(format!(
                    "{part} is a symlink or not a directory; not following it"
                )));
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(Some(dir))
}

/// Names of complete request files in `dir`, sorted.
fn complete_files(dir: &OwnedFd) -> Vec<String> {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        // Directories and devices are never requests; they are left alone, not
        // rejected again on every pass. (Unknown types are checked when opened.)
        .filter(|e| {
            matches!(
                e.file_type(),
                FileType::RegularFile | FileType::Symlink | FileType::Unknown
            )
        })
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Reads a request file: `Ok(None)` if it vanished, `Err(reason)` if it must be refused.
fn read_request_file(dir: &OwnedFd, name: &str) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err("a symlink, not a file".into()),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat it: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if stat.st_size as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes; request files may be at most {MAX_FILE_BYTES}",
            stat.st_size
        ));
    }
    let mut bytes = Vec::with_capacity(stat.st_size as usize);
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(Some(bytes))
}

/// Watches `data/ipc/` and processes request files until `shutdown` turns true.
pub async fn watch(ctx: Arc<IpcContext>, mut shutdown: watch::Receiver<bool>) {
    let mut watcher = match Watcher::new(ctx.ipc_root()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(
                "IPC: inotify is unavailable ({e}); request files are picked up every {} s only",
                SWEEP_EVERY.as_secs()
            );
            None
        }
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // Files were left over in the last pass: the next one covers every folder (each
    // takes at most FILES_PER_PASS files), so a flooded folder cannot starve the others.
    let mut again = false;
    loop {
        let wake = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(50)), if again => Wake::All,
            _ = sweep.tick() => Wake::All,
            w = async {
                match watcher.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => w,
        };
        let wake = if again { Wake::All } else { wake };
        let ctx = Arc::clone(&ctx);
        let done = tokio::task::spawn_blocking(move || {
            let folders = match wake {
                Wake::All => ctx.group_folders(),
                Wake::Folders(folders) => folders.into_iter().collect(),
            };
            let mut more = false;
            for folder in folders {
                more |= ctx.process_folder_pass(&folder).1;
            }
            more
        })
        .await;
        again = match done {
            Ok(more) => more,
            Err(e) => {
                tracing::error!("IPC: processing failed: {e}");
                false
            }
        };
    }
}

enum Wake {
    All,
    Folders(BTreeSet<String>),
}

/// What a watch descriptor watches.
enum Watched {
    Root,
    Folder(String),
    Requests(String),
}

/// inotify over `data/ipc/`, each group folder in it, and their request folders.
struct Watcher {
    root: PathBuf,
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    watches: HashMap<i32, Watched>,
    /// The watch of each watched path. An agent can rename its request folder away and
    /// make a new one any number of times; the old folder's watch is removed when the
    /// new one is added, so watches never pile up.
    by_path: HashMap<PathBuf, i32>,
}

impl Watcher {
    fn new(root: PathBuf) -> std::io::Result<Watcher> {
        use rustix::fs::inotify;
        std::fs::create_dir_all(&root)?;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and refers
        // to the same inotify instance for the AsyncFd's whole life.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        let mut w = Watcher {
            root,
            fd,
            watches: HashMap::new(),
            by_path: HashMap::new(),
        };
        w.add(PathBuf::new(), Watched::Root)?;
        let folders: Vec<String> = std::fs::read_dir(&w.root)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        for folder in folders {
            w.add_folder(&folder);
        }
        Ok(w)
    }

    fn add(&mut self, relative: PathBuf, what: Watched) -> std::io::Result<()> {
        use rustix::fs::inotify::{WatchFlags, add_watch};
        let flags = match what {
            Watched::Root | Watched::Folder(_) => WatchFlags::CREATE | WatchFlags::MOVED_TO,
            Watched::Requests(_) => WatchFlags::MOVED_TO | WatchFlags::CLOSE_WRITE,
        } | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW;
        let wd = add_watch(self.fd.get_ref(), self.root.join(&relative), flags)?;
        self.watches.insert(wd, what);
        if let Some(old) = self.by_path.insert(relative, wd)
            && old != wd
            && !self.by_path.values().any(|w| *w == old)
        {
            self.watches.remove(&old);
            let _ = rustix::fs::inotify::remove_watch(self.fd.get_ref(), old);
        }
        Ok(())
    }

    fn add_folder(&mut self, folder: &str) {
        if GroupFolder::parse(folder).is_err() {
            return;
        }
        let _ = self.add(PathBuf::from(folder), Watched::Folder(folder.to_string()));
        for kind in KINDS {
            let _ = self.add(
                PathBuf::from(folder).join(kind),
                Watched::Requests(folder.to_string()),
            );
        }
    }

    /// Waits for activity; returns the folders that changed (or all, after an overflow).
    async fn next(&mut self) -> Wake {
        use rustix::fs::inotify::{ReadFlags, Reader};
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return Wake::All;
            };
            let mut folders = BTreeSet::new();
            let mut overflow = false;
            let mut new_dirs: Vec<(Option<String>, String)> = Vec::new();
            {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
                let mut reader = Reader::new(self.fd.get_ref(), &mut buf);
                loop {
                    match reader.next() {
                        Ok(event) => {
                            let flags = event.events();
                            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                                overflow = true;
                                continue;
                            }
                            let name = event.file_name().map(|n| {
                                OsStr::from_bytes(n.to_bytes())
                                    .to_string_lossy()
                                    .into_owned()
                            });
                            if flags.contains(ReadFlags::IGNORED) {
                                let wd = event.wd();
                                self.watches.remove(&wd);
                                self.by_path.retain(|_, w| *w != wd);
                                continue;
                            }
                            match (self.watches.get(&event.wd()), name) {
                                (Some(Watched::Root), Some(name))
                                    if flags.contains(ReadFlags::ISDIR) =>
                                {
                                    new_dirs.push((None, name.clone()));
                                    folders.insert(name);
                                }
                                (Some(Watched::Folder(folder)), Some(name))
                                    if flags.contains(ReadFlags::ISDIR)
                                        && KINDS.contains(&name.as_str()) =>
                                {
                                    new_dirs.push((Some(folder.clone()), name));
                                    folders.insert(folder.clone());
                                }
                                (Some(Watched::Requests(folder)), _) => {
                                    folders.insert(folder.clone());
                                }
                                _ => {}
                            }
                        }
                        Err(Errno::AGAIN) => break,
                        Err(Errno::INTR) => continue,
                        Err(e) => {
                            tracing::warn!("IPC: reading inotify events failed: {e}");
                            overflow = true;
                            break;
                        }
                    }
                }
            }
            guard.clear_ready();
            drop(guard);
            for (parent, name) in new_dirs {
                match parent {
                    None => self.add_folder(&name),
                    Some(folder) => {
                        let _ = self.add(
                            PathBuf::from(&folder).join(&name),
                            Watched::Requests(folder.clone()),
                        );
                    }
                }
            }
            if overflow {
                return Wake::All;
            }
            if !folders.is_empty() {
                return Wake::Folders(folders);
            }
        }
    }
}

#[cfg(test)]
mod tests;
