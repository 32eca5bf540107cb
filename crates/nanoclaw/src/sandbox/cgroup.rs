//! Memory and process limits per bubblewrap sandbox, with the host's cgroups where it
//! lets us use them (podman and docker manage their own).
//!
//! Two kinds of host are supported:
//! - **cgroup v1** with the `memory` and `pids` controllers mounted and writable (root
//!   on a hybrid or legacy host, such as this project's CI machine): each sandbox gets a
//!   `nanoclaw-{sandbox}` child of the daemon's own cgroup in both hierarchies.
//! - **cgroup v2 with a delegated subtree** (a systemd service with `Delegate=yes`, or
//!   root on a pure v2 host): the daemon moves itself into a leaf `nanoclaw-daemon` of
//!   its own cgroup (v2 forbids processes in a cgroup that hands controllers to
//!   children), enables `memory` and `pids` for its children, and gives each sandbox a
//!   sibling `nanoclaw-{sandbox}`.
//!
//! Anywhere else (an ordinary user without delegation, the usual case on a desktop)
//! there is no per-sandbox memory limit: only the per-process `RLIMIT_DATA` and the
//! sized `/tmp` and home tmpfs bound it, while `RLIMIT_NPROC` in the sandbox's own user
//! namespace still bounds its processes. [`describe`] says which applies, for
//! `nanoclaw doctor`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::Limits;

/// What this host lets the daemon do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// cgroup v1: the daemon's cgroup directory in the `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
    /// cgroup v2: the directory sandbox cgroups are created in (controllers enabled).
    V2 { parent: PathBuf },
    /// Why there are no per-sandbox cgroups here.
    Unavailable(String),
}

/// The host's support, detected once per process (v2 detection may move the process
/// into a leaf cgroup of its own, see the module docs).
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        detect(&proc_cgroup, &mountinfo, std::process::id())
    })
}

/// One line for `nanoclaw doctor`.
pub fn describe() -> String {
    match support() {
        Support::V1 { memory, pids } => format!(
            "cgroup v1: a memory and a pids cgroup per bubblewrap sandbox (under {} and {})",
            memory.display(),
            pids.display()
        ),
        Support::V2 { parent } => format!(
            "cgroup v2: a cgroup per bubblewrap sandbox with memory.max and pids.max (under {})",
            parent.display()
        ),
        Support::Unavailable(why) => format!(
            "no cgroups for bubblewrap sandboxes ({why}): memory is bounded only per process \
             (RLIMIT_DATA) and by the sized /tmp and home; processes by RLIMIT_NPROC in each \
             sandbox's own user namespace. Run nanoclaw as root, or as a systemd service with \
             Delegate=yes, for a memory limit per sandbox"
        ),
    }
}

/// The daemon's cgroup directory of a v1 controller, or of the v2 hierarchy (`None`).
fn own_dir(proc_cgroup: &str, mountinfo: &str, controller: Option<&str>) -> Option<PathBuf> {
    let own = proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })?;
    let mount = mountinfo.lines().find_map(|line| {
        // id parent major:minor root mountpoint options [optional…] - fstype source super
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let (root, point) = (*fields.get(3)?, *fields.get(4)?);
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let _source = after.next()?;
        let options = after.next().unwrap_or("");
        let hit = match controller {
            None => fstype == "cgroup2",
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
        };
        hit.then(|| (root.to_string(), point.to_string()))
    })?;
    let (root, point) = mount;
    // The cgroup path is relative to the hierarchy's root; the mount may show a subtree.
    let relative = own.strip_prefix(root.trim_end_matches('/')).unwrap_or(&own);
    Some(Path::new(&point).join(relative.trim_start_matches('/')))
}

/// Whether we may create children in `dir` (tried, not guessed).
fn can_create_in(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!("nanoclaw-probe-{}", std::process::id()));
    fs::create_dir(&probe)
        .map_err(|e| format!("cannot create cgroups in {}: {e}", dir.display()))?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

fn detect(proc_cgroup: &str, mountinfo: &str, pid: u32) -> Support {
    let v1 = (
        own_dir(proc_cgroup, mountinfo, Some("memory")),
        own_dir(proc_cgroup, mountinfo, Some("pids")),
    );
    if let (Some(memory), Some(pids)) = v1 {
        return match can_create_in(&memory).and_then(|()| can_create_in(&pids)) {
            Ok(()) => Support::V1 { memory, pids },
            Err(why) => Support::Unavailable(why),
        };
    }
    let Some(own) = own_dir(proc_cgroup, mountinfo, None) else {
        return Support::Unavailable(
            "no cgroup hierarchy with the memory and pids controllers is mounted".into(),
        );
    };
    delegate_v2(&own, pid)
}

/// Sets up sandbox cgroups under `own` (the daemon's v2 cgroup), if it is delegated.
fn delegate_v2(own: &Path, pid: u32) -> Support {
    let read = |name: &str| fs::read_to_string(own.join(name)).unwrap_or_default();
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    let available = read("cgroup.controllers");
    if !(has(&available, "memory") && has(&available, "pids")) {
        return Support::Unavailable(format!(
            "the memory and pids controllers are not delegated to {} (it offers: {})",
            own.display(),
            if available.trim().is_empty() {
                "none"
            } else {
                available.trim()
            }
        ));
    }
    let enabled = read("cgroup.subtree_control");
    if has(&enabled, "memory") && has(&enabled, "pids") {
        // Only a cgroup without processes (or the root) hands controllers down; if the
        // daemon sits in one, its children are ours to create.
        return match can_create_in(own) {
            Ok(()) => Support::V2 {
                parent: own.to_path_buf(),
            },
            Err(why) => Support::Unavailable(why),
        };
    }
    let leaf = own.join("nanoclaw-daemon");
    let moved = fs::create_dir(&leaf)
        .or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .and_then(|()| fs::write(leaf.join("cgroup.procs"), pid.to_string()))
        .and_then(|()| fs::write(own.join("cgroup.subtree_control"), "+memory +pids"));
    match moved {
        Ok(()) => Support::V2 {
            parent: own.to_path_buf(),
        },
        Err(e) => Support::Unavailable(format!(
            "cannot take over {} for sandboxes ({e}); other processes may share it",
            own.display()
        )),
    }
}

/// A sandbox's cgroup(s), limits applied, ready to be joined by the sandbox process
/// before it starts; removed when dropped (once its processes have gone).
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    memory_dir: PathBuf,
    v2: bool,
    /// `cgroup.procs` of each directory, opened for writing.
    procs: Vec<OwnedFd>,
}

impl SandboxCgroup {
    /// Creates `nanoclaw-{name}` with `limits`; `Ok(None)` where cgroups are unavailable.
    pub fn create(name: &str, limits: &Limits) -> Result<Option<SandboxCgroup>, String> {
        Self::create_in(support(), name, limits)
    }

    fn create_in(
        support: &Support,
        name: &str,
        limits: &Limits,
    ) -> Result<Option<SandboxCgroup>, String> {
        // Unique: two sandboxes of one group may start in the same millisecond. The
        // daemon's pid marks it as a live daemon's, which another daemon starting on this
        // host must leave alone even while it is still empty (created, not yet joined).
        let leaf = format!(
            "nanoclaw-{name}-d{}-{}",
            std::process::id(),
            crate::ids::random_hex(4)
        );
        let (dirs, v2) = match support {
            Support::Unavailable(_) => return Ok(None),
            Support::V1 { memory, pids } => (vec![memory.join(&leaf), pids.join(&leaf)], false),
            Support::V2 { parent } => (vec![parent.join(&leaf)], true),
        };
        let mut cgroup = SandboxCgroup {
            memory_dir: dirs[0].clone(),
            dirs: Vec::new(),
            v2,
            procs: Vec::new(),
        };
        for dir in &dirs {
            fs::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            cgroup.dirs.push(dir.clone());
        }
        let settings = limit_files(v2, &dirs, limits);
        for (file, value, required) in settings {
            match fs::write(&file, &value) {
                Ok(()) => {}
                Err(_) if !required => {}
                Err(e) => return Err(format!("cannot set {}: {e}", file.display())),
            }
        }
        for dir in &dirs {
            let procs = dir.join("cgroup.procs");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
            cgroup.procs.push(file.into());
        }
        Ok(Some(cgroup))
    }

    /// The descriptors the sandbox process writes "0" to (joining) before it execs.
    pub fn procs_fds(&self) -> &[OwnedFd] {
        &self.procs
    }

    /// Whether the kernel killed a process of this sandbox for exceeding its memory.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.memory_dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Joins the calling process to every directory. Runs between fork and exec: only
    /// `write`, which is async-signal-safe.
    pub fn join_in_child(fds: &[OwnedFd]) -> io::Result<()> {
        for fd in fds {
            rustix::io::write(fd, b"0")?;
        }
        Ok(())
    }
}

/// The files that set `limits` in a sandbox's cgroup directories (v1: memory, pids;
/// v2: one), each with its value and whether it must exist.
fn limit_files(v2: bool, dirs: &[PathBuf], limits: &Limits) -> Vec<(PathBuf, String, bool)> {
    let memory = limits.memory_bytes.to_string();
    let pids = limits.pids.to_string();
    if v2 {
        let d = &dirs[0];
        vec![
            (d.join("memory.max"), memory, true),
            // No swap: tmpfs pages must count against memory.max, not leave for swap.
            (d.join("memory.swap.max"), "0".into(), false),
            (d.join("pids.max"), pids, true),
        ]
    } else {
        vec![
            (dirs[0].join("memory.limit_in_bytes"), memory.clone(), true),
            // Present only with swap accounting.
            (dirs[0].join("memory.memsw.limit_in_bytes"), memory, false),
            (dirs[1].join("pids.max"), pids, true),
        ]
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        self.procs.clear();
        if remove_all(&dirs) {
            return;
        }
        // Processes of the sandbox outlived its first process (the kernel tears a pid
        // namespace down asynchronously, or something escaped it): end them.
        for dir in &dirs {
            kill_members(dir);
        }
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            if remove_all(&dirs) {
                return;
            }
        }
        // The sandbox's last processes may still be exiting: try again for a while.
        std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if remove_all(&dirs) {
                    return;
                }
            }
            tracing::warn!(dirs = ?dirs, "a sandbox cgroup could not be removed");
        });
    }
}

/// SIGKILLs every process in the cgroup `dir` (v2 has `cgroup.kill` for this; v1 not).
fn kill_members(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn remove_all(dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .all(|d| matches!(fs::remove_dir(d), Ok(())) || !d.exists())
}

/// Removes sandbox cgroups a crashed daemon left behind; returns how many. Their
/// processes that outlived the daemon (parented to init: a live sandbox's are not) are
/// killed first.
pub fn remove_leftovers() -> usize {
    let parents: Vec<&Path> = match support() {
        Support::V1 { memory, pids } => vec![memory, pids],
        Support::V2 { parent } => vec![parent],
        Support::Unavailable(_) => return 0,
    };
    remove_leftovers_in(&parents)
}

/// The pid of the daemon that created the sandbox cgroup `leaf` (`…-d{pid}-{hex}`).
fn owner_pid(leaf: &str) -> Option<u32> {
    let mut parts = leaf.rsplit('-');
    let _random = parts.next()?;
    parts.next()?.strip_prefix('d')?.parse().ok()
}

fn remove_leftovers_in(parents: &[&Path]) -> usize {
    let mut leftovers: Vec<PathBuf> = Vec::new();
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with("nanoclaw-nanoclaw-") {
                continue;
            }
            // A live daemon's (this one's too, or one of another root on this host):
            // it may be about to join it, and removes it itself.
            let owner_alive = owner_pid(&name)
                .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !owner_alive {
                leftovers.push(entry.path());
            }
        }
    }
    for dir in &leftovers {
        let members = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in members.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let orphaned = fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|st| st.lines().any(|l| l.split_whitespace().eq(["PPid:", "1"])));
            if orphaned && let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let mut removed = 0;
    for _ in 0..10 {
        // Fails (EBUSY) while processes live in it: another daemon's live sandbox.
        leftovers.retain(|dir| {
            let gone = fs::remove_dir(dir).is_ok();
            removed += usize::from(gone);
            !gone
        });
        if leftovers.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn own_cgroups_are_found_per_hierarchy() {
        assert_eq!(
            own_dir(HYBRID_CGROUP, HYBRID_MOUNTS, Some("memory")),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            own_dir(HYBRID_CGROUP, HYBRID_MOUNTS, Some("pids")),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(
            own_dir(HYBRID_CGROUP, HYBRID_MOUNTS, None),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/nanoclaw.service\n";
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            own_dir(pure, mounts, None),
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/nanoclaw.service"
            ))
        );
        assert_eq!(own_dir(pure, mounts, Some("memory")), None);
    }

    /// A delegated v2 cgroup, simulated with plain files: the daemon moves itself into a
    /// leaf and enables the controllers; a sandbox cgroup gets its limits.
    #[test]
    fn v2_delegation_and_limits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let own = dir.path().join("nanoclaw.service");
        fs::create_dir(&own).expect("mkdir");
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        fs::write(own.join("cgroup.subtree_control"), "").expect("write");
        let support = delegate_v2(&own, 4242);
        assert_eq!(
            support,
            Support::V2 {
                parent: own.clone()
            }
        );
        assert_eq!(
            fs::read_to_string(own.join("nanoclaw-daemon/cgroup.procs")).expect("moved"),
            "4242"
        );
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).expect("enabled"),
            "+memory +pids"
        );
        let limits = Limits::default();
        let files = limit_files(true, &[own.join("nanoclaw-s1")], &limits);
        assert_eq!(
            files,
            vec![
                (
                    own.join("nanoclaw-s1/memory.max"),
                    limits.memory_bytes.to_string(),
                    true
                ),
                (
                    own.join("nanoclaw-s1/memory.swap.max"),
                    "0".to_string(),
                    false
                ),
                (
                    own.join("nanoclaw-s1/pids.max"),
                    limits.pids.to_string(),
                    true
                ),
            ]
        );
        let v1 = limit_files(
            false,
            &[PathBuf::from("/m/x"), PathBuf::from("/p/x")],
            &limits,
        );
        assert_eq!(v1[0].0, PathBuf::from("/m/x/memory.limit_in_bytes"));
        assert_eq!(v1[2].0, PathBuf::from("/p/x/pids.max"));
    }

    /// A daemon starting on this host removes a crashed daemon's cgroups, never a live
    /// one's, even an empty one a sandbox is about to join (CI caught that race: the
    /// sandbox then failed to start with ENODEV).
    #[test]
    fn leftovers_of_live_daemons_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = format!("nanoclaw-nanoclaw-main-1-d{}-ab12", std::process::id());
        // Above the kernel's largest pid_max: never a live process.
        let dead = "nanoclaw-nanoclaw-main-1-d4194305-cd34";
        let legacy = "nanoclaw-nanoclaw-main-1-ef56";
        for name in [live.as_str(), dead, legacy, "unrelated"] {
            fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        assert_eq!(owner_pid(&live), Some(std::process::id()));
        assert_eq!(owner_pid(legacy), None);
        assert_eq!(remove_leftovers_in(&[dir.path()]), 2);
        assert!(dir.path().join(&live).exists());
        assert!(dir.path().join("unrelated").exists());
        assert!(!dir.path().join(dead).exists());
        assert!(!dir.path().join(legacy).exists());
    }

    #[test]
    fn v2_without_delegated_controllers_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("cgroup.controllers"), "cpu io\n").expect("write");
        match delegate_v2(dir.path(), 1) {
            Support::Unavailable(why) => assert!(why.contains("not delegated"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
