//! Files users send (attachments), saved into the group's folder under `inbox/`, where
//! the agent finds them as `/workspace/group/inbox/{name}`.
//!
//! The group folder is writable by the agent, so anything in it may be a symlink the
//! agent planted: every step opens beneath a directory descriptor without following
//! symlinks (`open_dir_beneath`, `write_beneath`), names are reduced to a safe
//! alphabet, files are never executable, and an existing file is never replaced.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use crate::layout::open_dir_beneath;
use crate::sandbox::runner::write_beneath;

/// Where the agent sees a group's inbox.
pub const INBOX_IN_SANDBOX: &str = "/workspace/group/inbox";

/// Saves `bytes` as a new file in `groups/{folder}/inbox/` and returns its path inside
/// the sandbox. The inbox and the file belong to whoever owns the group folder (the
/// sandbox's user), readable by it, never executable.
pub fn save(groups_dir: &Path, folder: &str, name: &str, bytes: &[u8]) -> io::Result<String> {
    use rustix::fs::{Gid, Mode, Uid, fchmod, fchown, fstat};
    let group = open_dir_beneath(groups_dir, &[folder])?;
    let owner = fstat(&group)?;
    let inbox = open_dir_beneath(groups_dir, &[folder, "inbox"])?;
    fchown(
        inbox.as_fd(),
        Some(Uid::from_raw(owner.st_uid)),
        Some(Gid::from_raw(owner.st_gid)),
    )?;
    fchmod(inbox.as_fd(), Mode::from_raw_mode(0o755))?;
    let (stem, ext) = safe_name(name);
    // Written once under a temporary name, then given the first free name with
    // RENAME_NOREPLACE: two files saved at once under one name both keep their bytes
    // (a check first and a plain rename after would let the second replace the first).
    let tmp = format!(".{stem}.{}.tmp", crate::ids::random_hex(6));
    write_beneath(&inbox, &tmp, bytes, Some((owner.st_uid, owner.st_gid)))?;
    for n in 0..1000 {
        let candidate = match n {
            0 => format!("{stem}{ext}"),
            n => format!("{stem}-{n}{ext}"),
        };
        match rustix::fs::renameat_with(
            &inbox,
            tmp.as_str(),
            &inbox,
            candidate.as_str(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(format!("{INBOX_IN_SANDBOX}/{candidate}")),
            // Taken (a file, a symlink, anything): try the next name.
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&inbox, tmp.as_str(), rustix::fs::AtFlags::empty());
                return Err(e.into());
            }
        }
    }
    let _ = rustix::fs::unlinkat(&inbox, tmp.as_str(), rustix::fs::AtFlags::empty());
    Err(io::Error::other(format!(
        "1000 files named like {stem}{ext} are already in the inbox"
    )))
}

/// A file name of letters, digits, `.`, `-` and `_` only, not hidden, at most 100
/// characters, split into stem and extension (`report.pdf` → `("report", ".pdf")`).
pub fn safe_name(name: &str) -> (String, String) {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while clean.starts_with(['.', '-']) {
        clean.remove(0);
    }
    let (stem, ext) = match clean.rfind('.') {
        Some(i) if i > 0 && clean.len() - i <= 10 => {
            (clean[..i].to_string(), clean[i..].to_string())
        }
        _ => (clean.clone(), String::new()),
    };
    let mut stem: String = stem.trim_matches('_').chars().take(90).collect();
    if stem.is_empty() {
        stem = "file".into();
    }
    (stem, ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        let cases = [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("C:\\\\Users\\\\x\\\\photo.JPG", "photo.jpg"),
            (".bashrc", "bashrc"),
            ("-rf", "rf"),
            ("naïve résumé.docx", "na_ve_r_sum.docx"),
            ("", "file"),
            ("...", "file"),
            ("a b;c|d$(e).txt", "a_b_c_d__e.txt"),
        ];
        for (name, want) in cases {
            let (stem, ext) = safe_name(name);
            assert_eq!(format!("{stem}{ext}"), want, "{name}");
        }
        let (stem, _) = safe_name(&"x".repeat(300));
        assert!(stem.len() <= 90);
    }

    #[test]
    fn files_are_saved_beneath_the_group_and_never_through_a_symlink() {
        let root = tempfile::tempdir().expect("temp dir");
        let groups = root.path().join("groups");
        std::fs::create_dir_all(groups.join("mail_alice")).expect("group dir");
        let first = save(&groups, "mail_alice", "notes.txt", b"one").expect("saved");
        assert_eq!(first, "/workspace/group/inbox/notes.txt");
        let second = save(&groups, "mail_alice", "notes.txt", b"two").expect("saved");
        assert_eq!(second, "/workspace/group/inbox/notes-1.txt");
        let inbox = groups.join("mail_alice/inbox");
        assert_eq!(
            std::fs::read(inbox.join("notes.txt")).expect("read"),
            b"one"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(inbox.join("notes-1.txt"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o644,
            "readable, never executable, whatever the umask"
        );
        // An agent replaces the inbox with a symlink to somewhere else.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("dir");
        std::fs::rename(&inbox, root.path().join("old-inbox")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &inbox).expect("symlink");
        let refused = save(&groups, "mail_alice", "x.txt", b"x");
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 0);
        // A symlink under a file's name is skipped, not written through.
        std::fs::remove_file(&inbox).expect("unlink");
        std::fs::create_dir(&inbox).expect("dir");
        std::os::unix::fs::symlink(elsewhere.join("target"), inbox.join("y.txt")).expect("symlink");
        let saved = save(&groups, "mail_alice", "y.txt", b"y").expect("saved");
        assert_eq!(saved, "/workspace/group/inbox/y-1.txt");
        assert!(!elsewhere.join("target").exists());
    }

    /// Files saved at once under one name each keep their own bytes (a review found
    /// 18 of 30 parallel uploads lost when a check came before a plain rename).
    #[test]
    fn files_saved_at_once_under_one_name_are_all_kept() {
        let root = tempfile::tempdir().expect("temp dir");
        let groups = root.path().join("groups");
        std::fs::create_dir_all(groups.join("team")).expect("group dir");
        let paths: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let groups = &groups;
                    s.spawn(move || {
                        save(groups, "team", "race.txt", format!("file {i}").as_bytes())
                            .expect("saved")
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let distinct: std::collections::HashSet<&String> = paths.iter().collect();
        assert_eq!(distinct.len(), 16, "{paths:?}");
        let inbox = groups.join("team/inbox");
        let mut contents: Vec<String> = std::fs::read_dir(&inbox)
            .expect("list")
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).expect("read"))
            .collect();
        contents.sort();
        assert_eq!(
            contents.len(),
            16,
            "no temporary file is left: {contents:?}"
        );
        for i in 0..16 {
            assert!(contents.contains(&format!("file {i}")), "{contents:?}");
        }
    }
}
