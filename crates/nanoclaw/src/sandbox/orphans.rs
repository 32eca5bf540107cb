//! What dead daemons' bwrap sandboxes leave behind, and how it is found (decisions §37).
//!
//! Every bwrap carries two environment variables: [`ORPHAN_MARK`] (the root it belongs
//! to) and [`OWNER_MARK`] (which owners folder, by device and inode, and the name of a
//! lock file in it that its starter holds for as long as it lives). A lock held is an
//! owner alive, whatever pid or time namespace either side runs in, and a dead owner (a
//! zombie too) holds none; a mark naming another owners folder (another mount
//! namespace's root at the same path) is not ours to judge. Only processes of this
//! daemon's own uid running the bwrap binary itself (the same file, or its path marked
//! deleted after an upgrade) count, and only their environment is read: another user's
//! process, or a program that merely calls itself bwrap, is never a reason to kill.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// The environment variable that marks bwrap processes of a root (its label).
pub const ORPHAN_MARK: &str = "NANOCLAW_SANDBOX_OF";
/// The lock file (its name, in the root's owner folder) of the process that started
/// the sandbox.
pub const OWNER_MARK: &str = "NANOCLAW_SANDBOX_OWNER";
/// A process's environment is read up to this size (bwrap's is a few variables).
const MAX_ENVIRON: u64 = 64 * 1024;

/// The lock a process holds while it owns sandboxes: `{dir}/{name}.lock`, locked with
/// `flock` for as long as the process lives. Opened close-on-exec, so no sandbox
/// inherits it.
pub struct Owner {
    pub name: String,
    _lock: std::os::fd::OwnedFd,
}

impl Owner {
    /// Creates and locks a new owner file in `dir` (the root's owner folder). It is
    /// locked before it appears under its name, so a cleanup running meanwhile never
    /// takes a new owner for a dead one.
    pub fn take(dir: &Path) -> Result<Owner, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let (dev, ino) = dir_id(dir).ok_or_else(|| format!("cannot stat {}", dir.display()))?;
        let file = format!("{}-{}", std::process::id(), crate::ids::random_hex(8));
        let temporary = dir.join(format!(".{file}.tmp"));
        let fd = rustix::fs::open(
            &temporary,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| format!("cannot create {}: {e}", temporary.display()))?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| format!("cannot lock {}: {e}", temporary.display()))?;
        let path = dir.join(format!("{file}.lock"));
        std::fs::rename(&temporary, &path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Owner {
            name: format!("{dev}-{ino}-{file}"),
            _lock: fd,
        })
    }
}

/// A folder's device and inode.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether the owner named `name` (an [`OWNER_MARK`] value) still holds its lock in
/// `dir`. A file that is gone, or that can be locked, is an owner gone. A name that is
/// not one [`Owner::take`] makes, or names another owners folder, is answered "alive":
/// never a reason to kill.
pub fn owner_alive(dir: &Path, name: &str) -> bool {
    let mut parts = name.splitn(3, '-');
    let (Some(dev), Some(ino), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    let named = (dev.parse::<u64>().ok(), ino.parse::<u64>().ok());
    match dir_id(dir) {
        Some((d, i)) if named == (Some(d), Some(i)) => file_owner_alive(dir, file),
        _ => true,
    }
}

/// [`owner_alive`] for a lock file's own name (`{pid}-{random}`) in `dir`.
fn file_owner_alive(dir: &Path, file: &str) -> bool {
    let well_formed = !file.is_empty()
        && file.len() <= 64
        && file.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !well_formed {
        return true;
    }
    let path = dir.join(format!("{file}.lock"));
    let fd = match rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return false,
        Err(_) => return true,
    };
    let regular = rustix::fs::fstat(&fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    });
    if !regular {
        return true;
    }
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared).is_err()
}

/// Removes the lock files in `dir` whose owners are gone.
pub fn remove_dead_owners(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if !file_owner_alive(dir, name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// One bwrap process as cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub parent: i32,
    /// Its start time (field 22 of `/proc/{pid}/stat`), to tell it from a later process
    /// with the same pid.
    pub start: u64,
    /// It carries this root's [`ORPHAN_MARK`].
    pub marked: bool,
    /// Its [`OWNER_MARK`], when it has one.
    pub owner: Option<String>,
}

/// A process's parent and start time, from `/proc/{pid}/stat`.
fn stat(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is the state (field 3); a zombie holds nothing and is skipped.
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// The live bwrap processes of this uid (running `program` itself, or a replaced copy
/// of it), with their marks for the root `label`. Other processes' environments are
/// never read.
pub fn bwrap_processes(program: &Path, label: &str) -> HashMap<i32, Proc> {
    use std::os::unix::fs::MetadataExt;
    let mut all = HashMap::new();
    let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let Some(binary) = std::fs::metadata(&program).ok().map(|m| (m.dev(), m.ino())) else {
        return all;
    };
    let uid = rustix::process::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return all;
    };
    let mut replaced = program.clone().into_os_string();
    replaced.push(" (deleted)");
    let mark = format!("{ORPHAN_MARK}={label}");
    let owner_prefix = format!("{OWNER_MARK}=");
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Another user's processes are theirs: whatever they claim, never read or killed.
        let mine = std::fs::metadata(entry.path()).is_ok_and(|m| m.uid() == uid);
        if !mine {
            continue;
        }
        // The very file (a path alone can be faked from another mount namespace), or a
        // bwrap started before its package was upgraded, whose file reads "… (deleted)".
        let same_file =
            std::fs::metadata(entry.path().join("exe")).is_ok_and(|m| (m.dev(), m.ino()) == binary);
        let upgraded = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.as_os_str() == replaced.as_os_str());
        if !same_file && !upgraded {
            continue;
        }
        let Some((parent, start)) = stat(pid) else {
            continue;
        };
        let env = read_capped(&entry.path().join("environ"));
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let owner = vars.iter().find_map(|v| {
            std::str::from_utf8(v)
                .ok()?
                .strip_prefix(&owner_prefix)
                .map(str::to_string)
        });
        all.insert(
            pid,
            Proc {
                parent,
                start,
                marked: vars.contains(&mark.as_bytes()),
                owner,
            },
        );
    }
    all
}

fn read_capped(path: &PathBuf) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_ENVIRON).read_to_end(&mut buf);
    }
    buf
}

/// The marked processes left of sandboxes whose owner is gone; for marks without an
/// owner (sandboxes of older builds), those whose chain of marked ancestors ends at
/// one parented to init. A sandbox of a live owner (another `nanoclaw` on this root,
/// `nanoclaw sandbox exec`) is left alone.
pub fn leftovers(processes: &HashMap<i32, Proc>, owner_alive: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    for (&pid, p) in processes {
        if !p.marked {
            continue;
        }
        let gone = match &p.owner {
            Some(owner) => !owner_alive(owner),
            None => {
                let mut top = pid;
                // Bounded: a chain cannot be longer than the table (nor loop).
                for _ in 0..processes.len() {
                    match processes.get(&top) {
                        Some(t) if processes.get(&t.parent).is_some_and(|q| q.marked) => {
                            top = t.parent;
                        }
                        _ => break,
                    }
                }
                processes.get(&top).is_some_and(|t| t.parent == 1)
            }
        };
        if gone {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Kills `pid` if it is still the process listed (same start time): through a pidfd,
/// so a pid reused after the check cannot be hit.
pub fn kill_listed(pid: i32, start: u64) -> bool {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return false;
    };
    // The pidfd now pins the process: if the pid still has the listed start time, the
    // descriptor is that process.
    if stat(pid).map(|(_, s)| s) != Some(start) {
        return false;
    }
    rustix::process::pidfd_send_signal(fd.as_fd(), rustix::process::Signal::KILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_of_a_gone_owner_are_leftovers_wherever_they_are() {
        let p = |parent: i32, marked: bool, owner: Option<&str>| Proc {
            parent,
            start: 1,
            marked,
            owner: owner.map(str::to_string),
        };
        let table: HashMap<i32, Proc> = [
            (10, p(1, true, Some("gone"))), // an orphaned outer bwrap, its owner gone
            (11, p(10, true, Some("gone"))), // the init it forked
            (13, p(77, true, Some("gone2"))), // under a subreaper, its owner gone
            (20, p(5, false, None)),        // a bwrap of another root
            (21, p(20, true, Some("live"))), // a live owner's sandbox
            (23, p(1, true, Some("live"))), // under init, but its owner lives
            (40, p(1, true, None)),         // an older mark without an owner, under init
            (41, p(40, true, None)),
            (42, p(5, true, None)),  // an older mark under a live parent
            (50, p(51, true, None)), // a loop (cannot happen; must not hang)
            (51, p(50, true, None)),
        ]
        .into_iter()
        .collect();
        let alive = |owner: &str| owner == "live";
        assert_eq!(leftovers(&table, alive), vec![10, 11, 13, 40, 41]);
    }

    #[test]
    fn an_owner_is_alive_while_it_holds_its_lock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = Owner::take(dir.path()).expect("owner");
        assert!(owner_alive(dir.path(), &owner.name));
        // A cleanup meanwhile keeps a live owner's file.
        remove_dead_owners(dir.path());
        assert!(owner_alive(dir.path(), &owner.name));
        let name = owner.name.clone();
        drop(owner);
        assert!(!owner_alive(dir.path(), &name), "its lock is released");
        let (dev, ino) = dir_id(dir.path()).expect("id");
        assert!(
            !owner_alive(dir.path(), &format!("{dev}-{ino}-123-abcdef")),
            "no such owner"
        );
        // Another owners folder (the same path in another mount namespace): not ours.
        assert!(owner_alive(
            dir.path(),
            &format!("{dev}-{}-123-abcdef", ino + 1)
        ));
        // Names no owner makes are never grounds to kill.
        assert!(owner_alive(
            dir.path(),
            &format!("{dev}-{ino}-../../etc/passwd")
        ));
        assert!(owner_alive(dir.path(), "../../etc/passwd"));
        assert!(owner_alive(dir.path(), ""));
        remove_dead_owners(dir.path());
        let file = name.splitn(3, '-').nth(2).expect("file");
        assert!(!dir.path().join(format!("{file}.lock")).exists());
    }

    #[test]
    fn a_pid_is_killed_only_while_it_is_the_process_listed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let (_, start) = stat(pid).expect("stat");
        assert!(
            !kill_listed(pid, start + 1),
            "another start time: not that process"
        );
        assert!(kill_listed(pid, start));
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }
}
