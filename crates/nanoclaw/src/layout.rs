//! The files on disk (SPEC §2): every path the host uses is built here, from the root and
//! a validated [`GroupFolder`], so no other module joins user-controlled strings onto
//! paths.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The rule for group folder names, quoted in every rejection.
pub const GROUP_FOLDER_RULE: &str = "group folder names must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ \
     (start with a letter or digit; then up to 63 letters, digits, `_` or `-`) and must not be \
     `global` or `errors`";

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid group folder `{folder}`: {problem}; {rule}", rule = GROUP_FOLDER_RULE)]
pub struct GroupFolderError {
    pub folder: String,
    pub problem: String,
}

/// A group folder name that has passed validation: safe to join onto `groups/`,
/// `data/sessions/` and `data/ipc/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupFolder(String);

impl GroupFolder {
    pub fn parse(name: &str) -> Result<GroupFolder, GroupFolderError> {
        let fail = |problem: String| GroupFolderError {
            folder: name.chars().take(80).collect(),
            problem,
        };
        let mut chars = name.chars();
        let Some(first) = chars.next() else {
            return Err(fail("it is empty".into()));
        };
        if name.eq_ignore_ascii_case("global") {
            return Err(fail(
                "`global` is reserved for the shared memory folder".into(),
            ));
        }
        if name.eq_ignore_ascii_case("errors") {
            // data/ipc/errors holds every group's rejected IPC files.
            return Err(fail(
                "`errors` is reserved for rejected IPC files (data/ipc/errors)".into(),
            ));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(fail(format!("it starts with `{first}`")));
        }
        if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(fail(format!("it contains `{}`", bad.escape_default())));
        }
        let len = name.chars().count();
        if len > 64 {
            return Err(fail(format!(
                "it is {len} characters long, at most 64 are allowed"
            )));
        }
        Ok(GroupFolder(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupFolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Paths under the root directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn env_file(&self) -> PathBuf {
        self.root.join(".env")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("store/messages.db")
    }
    pub fn auth_dir(&self) -> PathBuf {
        self.root.join("store/auth")
    }
    /// WhatsApp's keys: the linked device's identity and Signal sessions.
    pub fn whatsapp_store(&self) -> PathBuf {
        self.auth_dir().join("whatsapp.db")
    }
    pub fn groups_dir(&self) -> PathBuf {
        self.root.join("groups")
    }
    pub fn global_dir(&self) -> PathBuf {
        self.root.join("groups/global")
    }
    pub fn group_dir(&self, folder: &GroupFolder) -> PathBuf {
        self.groups_dir().join(folder.as_str())
    }
    pub fn group_logs_dir(&self, folder: &GroupFolder) -> PathBuf {
        self.group_dir(folder).join("logs")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    /// `data/sessions/{folder}/.claude/`, mounted as the agent's `~/.claude`.
    pub fn sessions_dir(&self, folder: &GroupFolder) -> PathBuf {
        self.data_dir()
            .join("sessions")
            .join(folder.as_str())
            .join(".claude")
    }
    /// `data/ipc/{folder}/`: the group's IPC namespace.
    pub fn ipc_dir(&self, folder: &GroupFolder) -> PathBuf {
        self.data_dir().join("ipc").join(folder.as_str())
    }
    pub fn ipc_errors_dir(&self) -> PathBuf {
        self.data_dir().join("ipc/errors")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn http_token_path(&self) -> PathBuf {
        self.data_dir().join("http-token")
    }
    /// Held (flock) by the running daemon: one daemon per root.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.data_dir().join("daemon.lock")
    }
    /// Written by the running daemon: its pid and HTTP address, for the CLI.
    pub fn daemon_info_path(&self) -> PathBuf {
        self.data_dir().join("daemon.json")
    }
    /// Files the host provides to every sandbox (placeholders, `/etc/passwd`).
    pub fn sandbox_support_dir(&self) -> PathBuf {
        self.data_dir().join("sandbox")
    }
    /// The lock files of the processes that own bwrap sandboxes (orphan cleanup).
    pub fn sandbox_owners_dir(&self) -> PathBuf {
        self.sandbox_support_dir().join("owners")
    }
    /// An empty read-only file, mounted over files a sandbox must not read.
    pub fn empty_file(&self) -> PathBuf {
        self.sandbox_support_dir().join("empty-file")
    }
    /// The seccomp profile podman and docker sandboxes get (`sandbox/seccomp.rs`).
    pub fn seccomp_profile(&self) -> PathBuf {
        self.sandbox_support_dir().join("seccomp.json")
    }
    /// An empty read-only directory, mounted over directories a sandbox must not read.
    pub fn empty_dir(&self) -> PathBuf {
        self.sandbox_support_dir().join("empty-dir")
    }

    /// Creates the directory skeleton of a root (idempotent). The directories holding
    /// chats, memory, sessions and logs are owner-only (0700): other local users have
    /// no business reading them. (See [`Layout::share_with_sandbox_user`] for the one
    /// exception.)
    pub fn create(&self) -> io::Result<()> {
        for dir in [
            self.store_dir(),
            self.global_dir(),
            self.ipc_errors_dir(),
            self.data_dir().join("sessions"),
            self.logs_dir(),
            self.auth_dir(),
            self.empty_dir(),
            self.data_dir().join("proxy"),
            self.sandbox_owners_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
        }
        // Each sandbox's own socket folder in here is mounted into that sandbox only;
        // nobody else needs to reach it.
        set_mode(&self.data_dir().join("proxy"), 0o700)?;
        for private in [
            self.store_dir(),
            self.groups_dir(),
            self.data_dir(),
            self.logs_dir(),
            self.auth_dir(),
        ] {
            set_mode(&private, 0o700)?;
        }
        let support = self.sandbox_support_dir();
        write_if_changed(&self.empty_file(), b"")?;
        write_if_changed(
            &support.join("passwd"),
            b"root:x:0:0:root:/root:/usr/sbin/nologin\nnode:x:1000:1000:node:/home/node:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )?;
        write_if_changed(
            &support.join("group"),
            b"root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n",
        )?;
        // DNS inside bwrap sandboxes with their own network (slirp4netns's resolver).
        write_if_changed(&support.join("resolv.conf"), b"nameserver 10.0.2.3\n")?;
        if let Some(profile) = crate::sandbox::seccomp::oci_profile() {
            write_if_changed(&self.seccomp_profile(), profile.as_bytes())?;
            set_mode(&self.seccomp_profile(), 0o444)?;
        }
        // Readable by the sandbox user, writable by nobody.
        set_mode(&support, 0o755)?;
        set_mode(&self.empty_dir(), 0o555)?;
        for file in ["empty-file", "passwd", "group", "resolv.conf"] {
            set_mode(&support.join(file), 0o444)?;
        }
        Ok(())
    }

    /// Makes the root's `.env*` files (secrets) readable by their owner only; returns the
    /// ones that were looser. A symlinked one has its target tightened if the target is
    /// inside the root.
    pub fn tighten_env_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut tightened = Vec::new();
        let Ok(root) = fs::canonicalize(self.root()) else {
            return Ok(tightened);
        };
        for entry in fs::read_dir(&root)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with(".env") {
                continue;
            }
            let Ok(target) = fs::canonicalize(entry.path()) else {
                continue;
            };
            if !target.starts_with(&root) || !target.is_file() {
                continue;
            }
            let mode = fs::metadata(&target)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                set_mode(&target, mode & 0o700)?;
                tightened.push(target);
            }
        }
        Ok(tightened)
    }

    /// When the daemon runs as root, sandboxes run as unprivileged host ids, never as
    /// root (each group its own, see `sandbox::Identity`). Main's id (`uid`:`gid`) reads
    /// the read-only project view through its group: the root, `store/`, `groups/` and
    /// `data/` become group `gid` with `g+rx` (setgid, so new files stay in the group),
    /// while host-only parts (`logs/`, `store/auth/`, `data/http-token`,
    /// `data/ipc/errors/`, `data/proxy/`) stay root-only. Global memory belongs to main and
    /// is readable by all (other groups' sandboxes see it read-only). Ownership changes
    /// never follow symlinks.
    pub fn share_with_sandbox_user(&self, uid: u32, gid: u32) -> io::Result<()> {
        let root_owned = |path: &Path, mode: u32| -> io::Result<()> {
            chown_no_follow(path, Some(0), Some(gid))?;
            set_mode(path, mode)
        };
        root_owned(self.root(), 0o750)?;
        for dir in [
            self.store_dir(),
            self.groups_dir(),
            self.data_dir(),
            self.data_dir().join("ipc"),
            self.data_dir().join("sessions"),
        ] {
            root_owned(&dir, 0o2750)?;
        }
        for name in ["messages.db", "messages.db-wal", "messages.db-shm"] {
            let path = self.store_dir().join(name);
            if path.exists() {
                root_owned(&path, 0o640)?;
            }
        }
        for private in [
            self.logs_dir(),
            self.auth_dir(),
            self.ipc_errors_dir(),
            self.data_dir().join("proxy"),
        ] {
            chown_no_follow(&private, Some(0), Some(0))?;
            set_mode(&private, 0o700)?;
        }
        if self.http_token_path().exists() {
            chown_no_follow(&self.http_token_path(), Some(0), Some(0))?;
            set_mode(&self.http_token_path(), 0o600)?;
        }
        chown_tree_beneath(&self.groups_dir(), "global", uid, gid, Readable::ByAll)
    }

    /// Gives a group's writable folders to its sandbox id, recursively, never following
    /// symlinks: its group folder (readable, like everything under `groups/`, through
    /// main's project view: `groups/` itself is closed to everyone else), and its
    /// sessions and IPC folders (owner-only: no other group, main included, may read them).
    pub fn share_group_with_sandbox_user(
        &self,
        folder: &GroupFolder,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        self.create_group_dirs(folder)?;
        chown_tree_beneath(
            &self.groups_dir(),
            folder.as_str(),
            uid,
            gid,
            Readable::AsIs,
        )?;
        set_mode(&self.group_dir(folder), 0o755)?;
        for base in [
            self.data_dir().join("sessions"),
            self.data_dir().join("ipc"),
        ] {
            chown_tree_beneath(&base, folder.as_str(), uid, gid, Readable::AsIs)?;
            set_mode(&base.join(folder.as_str()), 0o700)?;
        }
        Ok(())
    }

    /// Removes Unix sockets and FIFOs from global memory, never following symlinks:
    /// global memory is mounted into every sandbox, and a socket there (read-only mounts
    /// do not stop `connect`) would be a channel between groups' sandboxes.
    pub fn remove_special_files_in_global(&self) -> io::Result<usize> {
        let dir = open_dir_beneath(&self.groups_dir(), &["global"])?;
        remove_special_files(dir, &self.global_dir(), 0)
    }

    /// Creates a group's folders: `groups/{f}/logs`, its sessions dir and IPC namespace,
    /// without following symlinks (see [`open_dir_beneath`]).
    pub fn create_group_dirs(&self, folder: &GroupFolder) -> io::Result<()> {
        let f = folder.as_str();
        open_dir_beneath(&self.groups_dir(), &[f, "logs"])?;
        open_dir_beneath(&self.data_dir().join("sessions"), &[f, ".claude"])?;
        for sub in ["messages", "tasks", "input"] {
            open_dir_beneath(&self.data_dir().join("ipc"), &[f, sub])?;
        }
        Ok(())
    }

    /// Reads `data/http-token`, creating it (mode 0600, 256 random bits) on first start.
    /// A token file readable by others is tightened back to 0600.
    pub fn load_or_create_http_token(&self) -> io::Result<String> {
        let path = self.http_token_path();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.len() < 16 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} holds no usable token (at least 16 characters); delete it and restart to create a new one",
                            path.display()
                        ),
                    ));
                }
                let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode != 0o600 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "HTTP token file was not 0600; tightening it");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                }
                Ok(token)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let token = crate::ids::random_hex(32);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| with_path(e, &path))?;
                file.write_all(token.as_bytes())?;
                file.write_all(b"\n")?;
                file.sync_all()?;
                Ok(token)
            }
            Err(e) => Err(with_path(e, &path)),
        }
    }
}

/// Opens (creating as needed) `base/parts[0]/parts[1]/…` as a directory, one component
/// at a time, refusing to follow symlinks.
///
/// Agents can replace anything inside the folders they may write (their group folder,
/// IPC namespace) with a symlink. Following one would let them aim the host's writes
/// (run logs, follow-up files) anywhere on the machine. `base` must be a directory no
/// agent can write (`groups/`, `data/ipc/`, `data/sessions/`); `parts` are single path
/// components (a validated folder name or a constant).
pub fn open_dir_beneath(base: &Path, parts: &[&str]) -> io::Result<OwnedFd> {
    use rustix::fs::{CWD, Mode, OFlags, mkdirat, openat};
    use rustix::io::Errno;
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut dir = openat(CWD, base, flags, Mode::empty()).map_err(|e| with_path(e.into(), base))?;
    let mut path = base.to_path_buf();
    for part in parts {
        if part.is_empty() || *part == "." || *part == ".." || part.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{part}` is not a single path component"),
            ));
        }
        path.push(part);
        match mkdirat(&dir, *part, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(with_path(e.into(), &path)),
        }
        dir = openat(&dir, *part, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => io::Error::other(format!(
                "{} is a symlink or not a directory; refusing to follow it (remove it and restart)",
                path.display()
            )),
            e => with_path(e.into(), &path),
        })?;
    }
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| with_path(e, path))
}

/// Writes `content` unless the file already holds exactly that.
fn write_if_changed(path: &Path, content: &[u8]) -> io::Result<()> {
    if fs::read(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    if path.exists() {
        // Our own placeholder files are read-only; replace rather than open for writing.
        fs::remove_file(path).map_err(|e| with_path(e, path))?;
    }
    fs::write(path, content).map_err(|e| with_path(e, path))
}

fn chown_no_follow(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Gid, Uid, chownat};
    let owner = uid.map(Uid::from_raw);
    let group = gid.map(Gid::from_raw);
    chownat(CWD, path, owner, group, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| with_path(e.into(), path))
}

/// Whether [`chown_tree_beneath`] also opens a tree for reading by everyone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readable {
    AsIs,
    /// Directories `o+rx`, regular files `o+r` (symlinks and others untouched).
    ByAll,
}

/// `chown -R uid:gid base/name` without following any symlink: an agent may have
/// planted a symlink to `/etc/shadow` in its folder, and root must not hand that over.
fn chown_tree_beneath(
    base: &Path,
    name: &str,
    uid: u32,
    gid: u32,
    readable: Readable,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Gid, Uid, chownat};
    let dir = open_dir_beneath(base, &[name])?;
    chownat(
        &dir,
        "",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::EMPTY_PATH,
    )
    .map_err(|e| with_path(e.into(), &base.join(name)))?;
    if readable == Readable::ByAll {
        add_mode(&dir, 0o005).map_err(|e| with_path(e, &base.join(name)))?;
    }
    chown_children(dir, &base.join(name), uid, gid, readable, 0)
}

/// Adds `bits` to the mode of the file open as `fd`.
fn add_mode(fd: &OwnedFd, bits: u32) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let mode = (st.st_mode & 0o7777) | bits;
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode))?;
    Ok(())
}

fn chown_children(
    dir: OwnedFd,
    path: &Path,
    uid: u32,
    gid: u32,
    readable: Readable,
    depth: usize,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid, chownat, openat};
    // Deeper entries were made by the sandbox itself, and so already belong to it: an
    // agent that nests folders absurdly deep must not make its group unrunnable.
    const MAX_DEPTH: usize = 128;
    if depth > MAX_DEPTH {
        tracing::warn!(path = %path.display(), "folders nested more than {MAX_DEPTH} deep are left as they are");
        return Ok(());
    }
    let entries = Dir::read_from(&dir).map_err(|e| with_path(e.into(), path))?;
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e.into(), path))?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        chownat(
            &dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| with_path(e.into(), path))?;
        if entry_kind(&dir, &entry, path)? == FileType::Directory {
            let child = open_child_dir(&dir, name, path)?;
            let child_path = path.join(String::from_utf8_lossy(bytes).as_ref());
            if readable == Readable::ByAll {
                add_mode(&child, 0o005).map_err(|e| with_path(e, &child_path))?;
            }
            chown_children(child, &child_path, uid, gid, readable, depth + 1)?;
        } else if readable == Readable::ByAll
            && let Ok(file) = openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )
            && rustix::fs::fstat(&file)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        {
            add_mode(&file, 0o004).map_err(|e| with_path(e, path))?;
        }
    }
    Ok(())
}

/// What a directory entry is, asking the filesystem (without following a symlink) when
/// the listing does not say.
fn entry_kind(
    dir: &OwnedFd,
    entry: &rustix::fs::DirEntry,
    path: &Path,
) -> io::Result<rustix::fs::FileType> {
    use rustix::fs::{AtFlags, FileType, statat};
    match entry.file_type() {
        FileType::Unknown => statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| FileType::from_raw_mode(st.st_mode))
            .map_err(|e| with_path(e.into(), path)),
        known => Ok(known),
    }
}

/// Opens the subdirectory `name` of `dir`, refusing a symlink.
fn open_child_dir(dir: &OwnedFd, name: &std::ffi::CStr, path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags, openat};
    openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| with_path(e.into(), path))
}

fn remove_special_files(dir: OwnedFd, path: &Path, depth: usize) -> io::Result<usize> {
    use rustix::fs::{AtFlags, Dir, FileType, unlinkat};
    if depth > 128 {
        return Ok(0);
    }
    let mut removed = 0;
    let entries = Dir::read_from(&dir).map_err(|e| with_path(e.into(), path))?;
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e.into(), path))?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        match entry_kind(&dir, &entry, path)? {
            FileType::Socket | FileType::Fifo => {
                unlinkat(&dir, name, AtFlags::empty()).map_err(|e| with_path(e.into(), path))?;
                removed += 1;
            }
            FileType::Directory => {
                let child = open_child_dir(&dir, name, path)?;
                let child_path = path.join(String::from_utf8_lossy(name.to_bytes()).as_ref());
                removed += remove_special_files(child, &child_path, depth + 1)?;
            }
            _ => {}
        }
    }
    Ok(removed)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_folder_rules() {
        let ok = ["main", "telegram_family", "a", "A-9_z", &"x".repeat(64)];
        for name in ok {
            assert!(
                GroupFolder::parse(name).is_ok(),
                "{name} should be accepted"
            );
        }
        let bad = [
            ("", "empty"),
            ("global", "reserved"),
            ("GLOBAL", "reserved"),
            ("../x", "starts with `.`"),
            ("_x", "starts with `_`"),
            ("a/b", "contains `/`"),
            ("a..b", "contains `.`"),
            ("a b", "contains ` `"),
            ("ümlaut", "starts with `ü`"),
            ("a\\b", "contains `\\\\`"),
            ("a\nb", "contains `\\n`"),
        ];
        for (name, needle) in bad {
            let e = GroupFolder::parse(name).expect_err(name).to_string();
            assert!(e.contains(needle), "{name:?}: {e}");
            assert!(
                e.contains("^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
                "rule quoted: {e}"
            );
        }
        let long = "x".repeat(65);
        let e = GroupFolder::parse(&long).expect_err("too long").to_string();
        assert!(e.contains("65 characters"), "{e}");
    }

    #[test]
    fn group_paths_stay_under_their_bases() {
        let layout = Layout::new("/r");
        let f = GroupFolder::parse("team").expect("valid");
        assert_eq!(layout.group_dir(&f), Path::new("/r/groups/team"));
        assert_eq!(
            layout.sessions_dir(&f),
            Path::new("/r/data/sessions/team/.claude")
        );
        assert_eq!(layout.ipc_dir(&f), Path::new("/r/data/ipc/team"));
    }

    #[test]
    fn group_dirs_are_created_private_and_symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(dir.path());
        layout.create().expect("create");
        let f = GroupFolder::parse("team").expect("valid");
        layout.create_group_dirs(&f).expect("group dirs");
        for p in [
            layout.group_logs_dir(&f),
            layout.sessions_dir(&f),
            layout.ipc_dir(&f).join("input"),
        ] {
            assert!(p.is_dir(), "{}", p.display());
        }
        for p in [
            layout.store_dir(),
            layout.data_dir(),
            layout.logs_dir(),
            layout.groups_dir(),
        ] {
            let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }

        // An agent swaps its logs folder for a symlink to somewhere else.
        let outside = tempfile::tempdir().expect("outside");
        fs::remove_dir(layout.group_logs_dir(&f)).expect("rmdir");
        std::os::unix::fs::symlink(outside.path(), layout.group_logs_dir(&f)).expect("symlink");
        let e = layout
            .create_group_dirs(&f)
            .expect_err("symlink refused")
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        let e =
            open_dir_beneath(&layout.groups_dir(), &["team", "logs", "x"]).expect_err("refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(
            fs::read_dir(outside.path()).expect("read").count(),
            0,
            "nothing created outside"
        );
        assert!(open_dir_beneath(&layout.groups_dir(), &["team", ".."]).is_err());
    }

    #[test]
    fn env_files_are_made_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(dir.path());
        fs::write(dir.path().join(".env"), "K=v").expect("write");
        fs::set_permissions(dir.path().join(".env"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        fs::write(dir.path().join(".env.local"), "K=v").expect("write");
        fs::set_permissions(
            dir.path().join(".env.local"),
            fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let tightened = layout.tighten_env_files().expect("tighten");
        assert_eq!(tightened.len(), 1);
        for name in [".env", ".env.local"] {
            let mode = fs::metadata(dir.path().join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[test]
    fn http_token_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(dir.path());
        layout.create().expect("create");
        let first = layout.load_or_create_http_token().expect("create token");
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(layout.http_token_path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = layout.load_or_create_http_token().expect("read token");
        assert_eq!(first, again);

        fs::set_permissions(layout.http_token_path(), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        layout.load_or_create_http_token().expect("read token");
        let mode = fs::metadata(layout.http_token_path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "loose permissions are tightened");
    }
}
