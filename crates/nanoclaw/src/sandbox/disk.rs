//! Disk: a group's folders within their quota (`container_config.limits.diskMb`), and
//! free space under the root kept above `NANOCLAW_MIN_FREE_DISK_MB` so the store never
//! fails a write for lack of space.
//!
//! No filesystem quota is assumed (ext4 project quotas and the like need mount options
//! a personal machine rarely has). Instead, a run is refused when the group is already
//! over quota or the disk is nearly full; while it runs, free space is checked every
//! second and the group's usage (allocated blocks, so `fallocate` and sparse files
//! count) every few seconds, and the run is stopped when either limit is crossed.
//! `RLIMIT_FSIZE` (the quota) stops any single file from outgrowing it at once.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often free space is checked during a run.
const FREE_SPACE_EVERY: Duration = Duration::from_secs(1);
/// How often the group's usage is measured (longer when measuring is slow).
const USAGE_EVERY: Duration = Duration::from_secs(3);

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Space allocated to everything under `roots` (each file once, symlinks not followed).
pub fn usage(roots: &[PathBuf]) -> u64 {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = 0u64;
    // An explicit stack, not recursion: any depth is counted (a deep tree must not
    // hide files from the quota).
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = stack.pop() {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
}

/// The limits one run is held to.
#[derive(Debug, Clone)]
pub struct DiskLimits {
    /// The group's writable folders.
    pub folders: Vec<PathBuf>,
    pub quota_bytes: u64,
    /// Where the store lives.
    pub root: PathBuf,
    pub min_free_bytes: u64,
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl DiskLimits {
    /// The limits of `folder`'s writable folders (its group folder, sessions and IPC,
    /// and for main the global memory it may write), under `layout`'s root.
    pub fn for_group(
        layout: &crate::layout::Layout,
        folder: &crate::layout::GroupFolder,
        is_main: bool,
        quota_bytes: u64,
        min_free_bytes: u64,
    ) -> DiskLimits {
        let mut folders = vec![
            layout.group_dir(folder),
            layout.data_dir().join("sessions").join(folder.as_str()),
            layout.ipc_dir(folder),
        ];
        if is_main {
            folders.push(layout.global_dir());
        }
        DiskLimits {
            folders,
            quota_bytes,
            root: layout.root().to_path_buf(),
            min_free_bytes,
        }
    }

    /// Why a run may not start now, if it may not.
    pub fn refuse_start(&self) -> Option<String> {
        if let Some(why) = self.low_space() {
            return Some(why);
        }
        let used = usage(&self.folders);
        (used > self.quota_bytes).then(|| self.over_quota(used))
    }

    /// Why a file of `size` bytes may not be added to the group's folders now (a file a
    /// user sent counts against the group's quota like one its agent wrote).
    pub fn refuse_file(&self, size: u64) -> Option<String> {
        if let Ok(free) = free_bytes(&self.root)
            && free < self.min_free_bytes.saturating_add(size)
        {
            return Some(format!(
                "the disk is nearly full ({} MiB free, {} MiB kept for the store)",
                mib(free),
                mib(self.min_free_bytes)
            ));
        }
        let used = usage(&self.folders);
        (used.saturating_add(size) > self.quota_bytes).then(|| {
            format!(
                "the group's folders would be over its disk quota of {} MiB",
                mib(self.quota_bytes)
            )
        })
    }

    fn low_space(&self) -> Option<String> {
        let free = free_bytes(&self.root).ok()?;
        (free < self.min_free_bytes).then(|| {
            format!(
                "the disk holding {} has only {} MiB free, below the {} MiB nanoclaw keeps for its store \
                 (NANOCLAW_MIN_FREE_DISK_MB); free some space",
                self.root.display(),
                mib(free),
                mib(self.min_free_bytes)
            )
        })
    }

    fn over_quota(&self, used: u64) -> String {
        format!(
            "the group's folders use {} MiB, over its disk quota of {} MiB; delete files in its folder \
             (or raise container_config.limits.diskMb)",
            mib(used),
            mib(self.quota_bytes)
        )
    }

    /// Resolves, with the reason, once the run must be stopped; pending forever otherwise.
    pub async fn watch(self) -> String {
        let mut next_usage = Instant::now() + USAGE_EVERY;
        loop {
            tokio::time::sleep(FREE_SPACE_EVERY).await;
            if let Some(why) = self.low_space() {
                return why;
            }
            if Instant::now() < next_usage {
                continue;
            }
            let folders = self.folders.clone();
            let started = Instant::now();
            let used = tokio::task::spawn_blocking(move || usage(&folders))
                .await
                .unwrap_or(0);
            // A huge folder must not cost a core: measure at most a tenth of the time.
            next_usage = Instant::now() + USAGE_EVERY.max(started.elapsed() * 10);
            if used > self.quota_bytes {
                return self.over_quota(used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_would_cross_the_quota_or_the_free_space_floor_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), vec![1u8; 300_000]).expect("file");
        let limits = |quota_bytes, min_free_bytes| DiskLimits {
            folders: vec![dir.path().to_path_buf()],
            quota_bytes,
            root: dir.path().to_path_buf(),
            min_free_bytes,
        };
        assert_eq!(limits(1 << 20, 0).refuse_file(100_000), None);
        let over = limits(1 << 20, 0).refuse_file(900_000).unwrap_or_default();
        assert!(over.contains("disk quota of 1 MiB"), "{over}");
        let full = limits(u64::MAX, u64::MAX / 2)
            .refuse_file(1)
            .unwrap_or_default();
        assert!(full.contains("nearly full"), "{full}");
    }

    #[test]
    fn usage_counts_allocated_space_once_and_never_follows_links() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::write(a.join("one"), vec![1u8; 1 << 20]).expect("write");
        std::fs::hard_link(a.join("one"), a.join("same")).expect("link");
        std::os::unix::fs::symlink("/usr", a.join("usr")).expect("symlink");
        let sparse = std::fs::File::create(a.join("sparse")).expect("create");
        sparse.set_len(1 << 30).expect("sparse");
        let mut deep = a.join("d");
        for _ in 0..300 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).expect("deep");
        std::fs::write(deep.join("hidden"), vec![1u8; 1 << 20]).expect("write deep");
        let used = usage(std::slice::from_ref(&a));
        assert!(
            used >= 2 << 20,
            "the file 300 folders deep counts too: {used}"
        );
        assert!(
            used < 4 << 20,
            "the hard link, symlink target and holes are not counted: {used}"
        );
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }

    #[tokio::test]
    async fn a_run_is_refused_or_stopped_over_its_limits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("group");
        std::fs::create_dir(&folder).expect("mkdir");
        let limits = DiskLimits {
            folders: vec![folder.clone()],
            quota_bytes: 1 << 20,
            root: dir.path().to_path_buf(),
            min_free_bytes: 0,
        };
        assert_eq!(limits.refuse_start(), None);
        std::fs::write(folder.join("big"), vec![0u8; 2 << 20]).expect("write");
        let why = limits.refuse_start().expect("over quota");
        assert!(why.contains("over its disk quota of 1 MiB"), "{why}");
        let why = tokio::time::timeout(Duration::from_secs(30), limits.clone().watch())
            .await
            .expect("stopped");
        assert!(why.contains("quota"), "{why}");
        let full = DiskLimits {
            min_free_bytes: u64::MAX,
            ..limits
        };
        let why = full.refuse_start().expect("disk full");
        assert!(why.contains("NANOCLAW_MIN_FREE_DISK_MB"), "{why}");
    }
}
