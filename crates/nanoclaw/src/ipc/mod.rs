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

pub mod authorize;
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
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
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

    /// Processes every complete request file of every group folder.
    pub fn process_all(&self) -> Vec<(String, String, FileOutcome)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.ipc_root()) else {
            return out;
        };
        let mut folders: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        folders.sort();
        for folder in folders {
            out.extend(self.process_folder(&folder));
        }
        out
    }

    /// Processes the complete request files of one folder: messages first, then tasks,
    /// each in name order (names start with a timestamp). Returns `(kind, name, outcome)`.
    pub fn process_folder(&self, folder: &str) -> Vec<(String, String, FileOutcome)> {
        let mut out = Vec::new();
        if GroupFolder::parse(folder).is_err() {
            // Not a group (e.g. `errors`), or a name no group can have.
            return out;
        }
        let source = match self.source(folder) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(folder, "IPC: cannot tell who this folder is: {e:?}");
                return out;
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
            for name in complete_files(&dir) {
                let outcome = self.process_file(&dir, &source, kind, &name);
                if kind == "tasks" && matches!(outcome, FileOutcome::Done(_)) {
                    tasks_touched = true;
                }
                out.push((kind.to_string(), name, outcome));
            }
        }
        if tasks_touched {
            self.refresh_task_snapshots(&source);
        }
        out
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

    fn process_file(&self, dir: &OwnedFd, source: &Source, kind: &str, name: &str) -> FileOutcome {
        let folder = source.folder.as_str();
        let reject = |reason: String| {
            tracing::warn!(folder, kind, file = name, "IPC: rejected: {reason}");
            match self.move_to_errors(dir, folder, name, &reason) {
                Ok(()) => FileOutcome::Rejected(reason),
                Err(e) => {
                    tracing::error!(
                        folder,
                        file = name,
                        "IPC: cannot move a rejected file to data/ipc/errors: {e}"
                    );
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                    FileOutcome::Rejected(reason)
                }
            }
        };
        let bytes = match read_request_file(dir, name) {
            Ok(Some(b)) => b,
            Ok(None) => return FileOutcome::Kept("gone before it was read".into()),
            Err(reason) => return reject(reason),
        };
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
                tracing::info!(source = folder, operation, "IPC: {what}");
                let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                FileOutcome::Done(what)
            }
            Err(IpcError::Denied { reason, target }) => {
                tracing::warn!(
                    source = folder,
                    operation,
                    target,
                    "IPC request denied: {reason}"
                );
                let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                FileOutcome::Denied(reason)
            }
            Err(IpcError::Invalid(reason)) => reject(format!("{operation}: {reason}")),
            Err(IpcError::Retry(reason)) => {
                tracing::error!(
                    source = folder,
                    operation,
                    file = name,
                    "IPC: will retry: {reason}"
                );
                FileOutcome::Kept(reason)
            }
        }
    }

    /// Moves `name` to `data/ipc/errors/{folder}-{name}` (never replacing an earlier
    /// one) and writes the reason next to it.
    fn move_to_errors(
        &self,
        dir: &OwnedFd,
        folder: &str,
        name: &str,
        reason: &str,
    ) -> std::io::Result<()> {
        let errors = crate::layout::open_dir_beneath(&self.ipc_root(), &["errors"])?;
        for n in 0..1000 {
            let target = if n == 0 {
                format!("{folder}-{name}")
            } else {
                format!("{folder}-{name}.{n}")
            };
            match rustix::fs::renameat_with(
                dir,
                name,
                &errors,
                target.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    let reason_file = format!("{target}.reason");
                    if let Ok(fd) = rustix::fs::openat(
                        &errors,
                        reason_file.as_str(),
                        OFlags::CREATE
                            | OFlags::TRUNC
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    ) {
                        use std::io::Write;
                        let _ = std::fs::File::from(fd).write_all(format!("{reason}\n").as_bytes());
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
    loop {
        let wake = tokio::select! {
            _ = sweep.tick() => Wake::All,
            w = async {
                match watcher.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => w,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let ctx = Arc::clone(&ctx);
        let done = tokio::task::spawn_blocking(move || match wake {
            Wake::All => {
                ctx.process_all();
            }
            Wake::Folders(folders) => {
                for folder in folders {
                    ctx.process_folder(&folder);
                }
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!("IPC: processing failed: {e}");
        }
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
        let wd = add_watch(self.fd.get_ref(), self.root.join(relative), flags)?;
        self.watches.insert(wd, what);
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
                                self.watches.remove(&event.wd());
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
