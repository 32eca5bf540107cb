//! `send_file` on the host: the file is opened beneath the source group's folder one
//! component at a time, never following a symlink, checked (a regular file, one link,
//! within the channel's size), and copied into `data/outbox-files/{folder}/`, which no
//! sandbox sees. Delivery reads only that copy, so whatever the agent does to its folder
//! afterwards (swap the file for a symlink, grow it, delete it) changes nothing.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{Mode, OFlags, openat};
use rustix::io::Errno;

use crate::layout::{GroupFolder, Layout, open_dir_beneath};
use crate::store::OutboxFile;

/// The folder under `data/` holding the host's copies of files in replies.
pub const OUTBOX_FILES: &str = "outbox-files";
/// Bytes of copies one group may have on the host at once (waiting for delivery, or
/// kept for the web app to download).
pub const MAX_KEPT_PER_GROUP: u64 = 200 << 20;
/// How long a delivered file stays for downloads (the web app).
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Copies the file at `parts` (see [`nanoclaw_protocol::ipc::group_file_components`])
/// in the group folder of `folder`, if it is at most `max` bytes. The error says what
/// is wrong with the file, in words for the user.
pub fn copy_from_group(
    layout: &Layout,
    folder: &GroupFolder,
    parts: &[&str],
    max: u64,
    min_free_bytes: u64,
) -> Result<OutboxFile, String> {
    let shown = nanoclaw_protocol::ipc::shorten(&parts.join("/"), 100);
    let Some((last, dirs)) = parts.split_last() else {
        return Err("no file was named".into());
    };
    let mut dir = open_dir_beneath(&layout.groups_dir(), &[folder.as_str()])
        .map_err(|e| format!("cannot open the group folder: {e}"))?;
    let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for (i, part) in dirs.iter().enumerate() {
        let upto = || nanoclaw_protocol::ipc::shorten(&parts[..=i].join("/"), 100);
        dir = openat(&dir, *part, dir_flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => format!(
                "{} is a symbolic link or not a folder (only files reached through real folders can be sent)",
                upto()
            ),
            Errno::NOENT => format!("{shown} does not exist"),
            e => format!("cannot open {}: {e}", upto()),
        })?;
    }
    // NONBLOCK: a FIFO opens at once (and is refused below) instead of hanging here.
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat(&dir, *last, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => format!("{shown} is a symbolic link (send the file itself)"),
        Errno::NOENT => format!("{shown} does not exist"),
        e => format!("cannot open {shown}: {e}"),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot look at {shown}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("{shown} is not a regular file"));
    }
    // A second name for one file may live where the group should not reach: refuse.
    if stat.st_nlink > 1 {
        return Err(format!(
            "{shown} has other hard links; send a copy of it (cp it to a new name)"
        ));
    }
    let size = stat.st_size.max(0) as u64;
    if size == 0 {
        return Err(format!("{shown} is empty"));
    }
    if size > max {
        return Err(too_large(&shown, size, max));
    }
    // Asked before reading, by the size the file claims (the read is capped by it too).
    let kept = kept_bytes(layout, folder);
    if kept + size > MAX_KEPT_PER_GROUP {
        return Err(over_kept(kept));
    }
    if let Ok(free) = crate::sandbox::disk::free_bytes(&layout.data_dir())
        && free < min_free_bytes.saturating_add(size)
    {
        return Err(format!(
            "the host's disk is nearly full ({} free); free some space",
            human(free)
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_large(&shown, bytes.len() as u64, max));
    }
    if kept + bytes.len() as u64 > MAX_KEPT_PER_GROUP {
        return Err(over_kept(kept));
    }
    let path = write_copy(layout, folder, &bytes)?;
    Ok(OutboxFile {
        name: display_name(last),
        path,
        size: bytes.len() as u64,
    })
}

fn over_kept(kept: u64) -> String {
    format!(
        "this group's files waiting for delivery or download already take {} of {}; try again later",
        human(kept),
        human(MAX_KEPT_PER_GROUP)
    )
}

fn too_large(shown: &str, size: u64, max: u64) -> String {
    format!(
        "{shown} is {}; this chat takes files up to {}",
        human(size),
        human(max)
    )
}

fn human(bytes: u64) -> String {
    nanoclaw_channel::text::human_size(bytes as usize)
}

/// The name the chat shows: the file's own, without control characters, invisible
/// formatting (a right-to-left override, U+202E, before `gpj.exe` shows "exe.jpg") or line and
/// paragraph separators, backslashes made `_`, at most 200 characters.
fn display_name(name: &str) -> String {
    let invisible = |c: char| {
        matches!(c, '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    let clean: String = name
        .chars()
        .filter(|c| !c.is_control() && !invisible(*c))
        .map(|c| if c == '\\' { '_' } else { c })
        .take(200)
        .collect();
    if clean.trim().is_empty() {
        "file".into()
    } else {
        clean
    }
}

fn group_dir(layout: &Layout, folder: &GroupFolder) -> PathBuf {
    layout.data_dir().join(OUTBOX_FILES).join(folder.as_str())
}

/// Bytes of copies the group has on the host now.
fn kept_bytes(layout: &Layout, folder: &GroupFolder) -> u64 {
    let Ok(entries) = std::fs::read_dir(group_dir(layout, folder)) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn write_copy(layout: &Layout, folder: &GroupFolder, bytes: &[u8]) -> Result<PathBuf, String> {
    let dir = open_dir_beneath(&layout.data_dir(), &[OUTBOX_FILES, folder.as_str()])
        .map_err(|e| format!("cannot keep a copy of the file: {e}"))?;
    let name = format!(
        "{}-{}",
        crate::clock::compact_now(),
        crate::ids::random_hex(8)
    );
    let fd: OwnedFd = openat(
        &dir,
        name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("cannot keep a copy of the file: {e}"))?;
    let path = group_dir(layout, folder).join(&name);
    let mut file = std::fs::File::from(fd);
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(format!("cannot keep a copy of the file: {e}"));
    }
    Ok(path)
}

/// Removes copies that are no longer needed: delivered (or given up) and older than
/// [`KEEP_DELIVERED`], keeping every file in `pending`. Returns how many went.
pub fn sweep(layout: &Layout, pending: &[PathBuf]) -> usize {
    let root = layout.data_dir().join(OUTBOX_FILES);
    let Ok(groups) = std::fs::read_dir(&root) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for group in groups.flatten() {
        let Ok(files) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > KEEP_DELIVERED);
            if old && !pending.contains(&path) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Whether `path` is one of the host's copies (what the web app may download).
pub fn is_copy(layout: &Layout, path: &Path) -> bool {
    path.starts_with(layout.data_dir().join(OUTBOX_FILES))
}

/// Sweeps now and then every hour until `stop` turns true.
pub async fn sweep_hourly(
    store: std::sync::Arc<crate::store::Store>,
    layout: Layout,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match store.call(|s| s.pending_outbox_files()).await {
            Ok(pending) => {
                let layout = layout.clone();
                let removed = tokio::task::spawn_blocking(move || sweep(&layout, &pending))
                    .await
                    .unwrap_or(0);
                if removed > 0 {
                    tracing::info!(removed, "removed files kept for delivered replies");
                }
            }
            Err(e) => tracing::warn!("cannot sweep data/outbox-files: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Layout, GroupFolder, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = Layout::new(dir.path());
        let folder = GroupFolder::parse("team").expect("folder");
        let group = layout.group_dir(&folder);
        std::fs::create_dir_all(group.join("out")).expect("mkdir");
        std::fs::create_dir_all(layout.data_dir()).expect("mkdir");
        (dir, layout, folder, group)
    }

    /// The host opens what the agent named itself, beneath the group folder: whatever
    /// the agent put there (symlinks to files or folders outside, hard links, FIFOs) is
    /// refused, and what it copies is what delivery sends.
    #[test]
    fn only_regular_files_beneath_the_group_folder_are_copied() {
        let (dir, layout, folder, group) = setup();
        let secret = dir.path().join("secret.env");
        std::fs::write(&secret, "ANTHROPIC_API_KEY=sk-real").expect("write");
        std::fs::write(group.join("out/report.txt"), "numbers").expect("write");
        std::os::unix::fs::symlink(&secret, group.join("link")).expect("symlink");
        std::os::unix::fs::symlink(dir.path(), group.join("up")).expect("symlink");
        std::fs::hard_link(&secret, group.join("hard")).expect("hard link");
        std::fs::write(group.join("empty"), "").expect("write");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            group.join("pipe"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let copy = |parts: &[&str], max| copy_from_group(&layout, &folder, parts, max, 0);

        let file = copy(&["out", "report.txt"], 1000).expect("copied");
        assert_eq!(file.name, "report.txt");
        assert_eq!(file.size, 7);
        assert!(is_copy(&layout, &file.path));
        assert_eq!(std::fs::read(&file.path).expect("copy"), b"numbers");
        // The group changing its file afterwards changes nothing already queued.
        std::fs::write(group.join("out/report.txt"), "changed").expect("write");
        assert_eq!(std::fs::read(&file.path).expect("copy"), b"numbers");

        for (parts, why) in [
            (&["link"][..], "symbolic link"),
            (&["up", "secret.env"][..], "symbolic link or not a folder"),
            (&["hard"][..], "other hard links"),
            (&["pipe"][..], "not a regular file"),
            (&["out"][..], "not a regular file"),
            (&["empty"][..], "is empty"),
            (&["missing"][..], "does not exist"),
            (&["out", "report.txt", "x"][..], "not a folder"),
        ] {
            let e = copy(parts, 1000).expect_err(why);
            assert!(e.contains(why), "{parts:?}: {e}");
        }
        let e = copy(&["out", "report.txt"], 3).expect_err("too large");
        assert!(e.contains("this chat takes files up to"), "{e}");
        let copies = std::fs::read_dir(layout.data_dir().join(OUTBOX_FILES).join("team"))
            .expect("copies")
            .count();
        assert_eq!(copies, 1, "refused files leave no copy");
    }

    #[test]
    fn shown_names_hide_nothing() {
        assert_eq!(display_name("\u{202E}gpj.exe"), "gpj.exe");
        assert_eq!(display_name("a\u{2028}b\u{200B}c\\d.txt"), "abc_d.txt");
        assert_eq!(display_name("\u{7}\u{202A}"), "file");
        assert_eq!(display_name("Grüße 📎.pdf"), "Grüße 📎.pdf");
    }

    #[test]
    fn the_free_space_floor_holds() {
        let (_dir, layout, folder, group) = setup();
        std::fs::write(group.join("a.txt"), "x").expect("write");
        let e = copy_from_group(&layout, &folder, &["a.txt"], 10, u64::MAX / 2)
            .expect_err("the disk is never that large");
        assert!(e.contains("nearly full"), "{e}");
    }

    #[test]
    fn a_groups_kept_copies_are_capped_and_old_ones_swept() {
        let (_dir, layout, folder, group) = setup();
        let big = std::fs::File::create(group.join("big")).expect("create");
        big.set_len(MAX_KEPT_PER_GROUP / 2 + 1).expect("size");
        let first = copy_from_group(&layout, &folder, &["big"], u64::MAX, 0).expect("first");
        let e = copy_from_group(&layout, &folder, &["big"], u64::MAX, 0).expect_err("over the cap");
        assert!(e.contains("already take"), "{e}");
        // Fresh, or still waiting for delivery: kept.
        assert_eq!(sweep(&layout, &[]), 0);
        let old = SystemTime::now() - KEEP_DELIVERED - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&first.path)
            .and_then(|f| f.set_modified(old))
            .expect("age it");
        assert_eq!(sweep(&layout, std::slice::from_ref(&first.path)), 0);
        assert_eq!(sweep(&layout, &[]), 1);
        assert!(!first.path.exists());
        copy_from_group(&layout, &folder, &["big"], u64::MAX, 0).expect("room again");
    }
}
