//! What the host serves one sandbox: a folder of its own, `data/proxy/runs/{sandbox}/`,
//! mounted at `/run/nanoclaw/` in that sandbox only, holding its credential-proxy socket
//! and, under the `internet` policy, its egress socket. Because each socket belongs to
//! one sandbox, the listener itself knows which run and group it serves: nothing a
//! sandbox sends can make it pass for another, and its connection caps are its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::Prepared;
use crate::egress::{self, Gate, SystemResolver};
use crate::layout::Layout;
use crate::mounts::NetworkPolicy;
use crate::proxy::{self, RunAccess, RunIdentity, RunTokens};

/// A sandbox's sockets; closed and removed when dropped.
pub struct RunServices {
    pub dir: PathBuf,
    access: RunAccess,
    egress: Option<tokio::task::JoinHandle<()>>,
}

impl RunServices {
    /// Creates the folder and starts the listeners. `run_id` names the run in the proxy's
    /// usage records.
    pub fn open(
        layout: &Layout,
        prepared: &Prepared,
        tokens: &Arc<RunTokens>,
        run_id: &str,
        budget: proxy::RunBudget,
        shutdown: watch::Receiver<bool>,
    ) -> Result<RunServices, String> {
        let runs = proxy::runs_dir(layout.root());
        // Unique: two sandboxes of one group may start in the same millisecond.
        let dir = runs.join(format!("{}-{}", prepared.name, crate::ids::random_hex(4)));
        std::fs::create_dir_all(&runs)
            .and_then(|()| set_mode(&runs, 0o711))
            .and_then(|()| std::fs::create_dir(&dir))
            .and_then(|()| set_mode(&dir, 0o755))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let access = tokens.open_run(
            RunIdentity {
                group_folder: prepared.folder.as_str().to_string(),
                run_id: run_id.to_string(),
                budget,
                mcp: proxy::mcp::routes(layout.root(), prepared),
            },
            &dir.join(proxy::SOCKET_NAME),
        );
        let access = match access {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let egress = if prepared.network == NetworkPolicy::Internet {
            let gate = Arc::new(Gate {
                group: prepared.folder.as_str().to_string(),
                policy: prepared.egress_policy(),
                resolver: Arc::new(SystemResolver),
            });
            match egress::serve(&dir.join(egress::SOCKET_NAME), gate, shutdown) {
                Ok(task) => Some(task),
                Err(e) => {
                    drop(access);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!("cannot start the egress proxy: {e}"));
                }
            }
        } else {
            None
        };
        Ok(RunServices {
            dir,
            access,
            egress,
        })
    }

    /// The run's credential-proxy token (its `ANTHROPIC_API_KEY`).
    pub fn token(&self) -> &str {
        &self.access.token
    }

    /// Removes the folders of sandboxes that no longer run (a crashed daemon's); a
    /// folder whose proxy socket still answers belongs to a live sandbox and is kept.
    pub fn remove_leftovers(layout: &Layout) -> usize {
        let Ok(entries) = std::fs::read_dir(proxy::runs_dir(layout.root())) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let live =
                std::os::unix::net::UnixStream::connect(path.join(proxy::SOCKET_NAME)).is_ok();
            if !live && std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

impl Drop for RunServices {
    fn drop(&mut self) {
        if let Some(task) = self.egress.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(self.dir.join(egress::SOCKET_NAME));
        let _ = std::fs::remove_file(self.dir.join(proxy::SOCKET_NAME));
        // The access is dropped after this (revoking the token); the folder goes once
        // empty.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
