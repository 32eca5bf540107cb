//! Follow-ups from the host: files in `/workspace/ipc/input/` (`{ts}-{seq}.json` holding
//! `{"type":"message","text":…}`, renamed into place), and `_close`, which ends the run.
//! Watched with inotify; the folder is scanned once at start and after every event.

use std::path::{Path, PathBuf};

use nanoclaw_protocol::{CLOSE_SENTINEL, FollowUp};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Message(String),
    Close,
}

pub struct Inbox {
    dir: PathBuf,
    wake: mpsc::UnboundedReceiver<()>,
}

impl Inbox {
    /// Starts watching `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<Inbox> {
        use rustix::fs::inotify;
        std::fs::create_dir_all(dir)?;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("inbox".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                let mut reader = inotify::Reader::new(&fd, &mut buf);
                loop {
                    match reader.next() {
                        Ok(_) => {
                            if tx.send(()).is_err() {
                                return;
                            }
                        }
                        Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                        Err(e) => {
                            eprintln!("inbox: inotify failed ({e}); follow-ups will not arrive");
                            return;
                        }
                    }
                }
            })?;
        Ok(Inbox {
            dir: dir.to_path_buf(),
            wake: rx,
        })
    }

    /// The next input: waits for the host when there is none yet. `None` if the watch
    /// stopped working.
    pub async fn next(&mut self) -> Option<Input> {
        loop {
            if let Some(input) = self.take_one() {
                return Some(input);
            }
            self.wake.recv().await?;
        }
    }

    /// Takes the oldest pending input, if any: follow-ups (in name order) before `_close`.
    fn take_one(&self) -> Option<Input> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            let content = std::fs::read(&path);
            let _ = std::fs::remove_file(&path);
            match content.map(|c| serde_json::from_slice::<FollowUp>(&c)) {
                Ok(Ok(FollowUp::Message { text })) => return Some(Input::Message(text)),
                Ok(Err(e)) => eprintln!("inbox: ignoring {name}: not a follow-up ({e})"),
                Err(e) => eprintln!("inbox: cannot read {name}: {e}"),
            }
        }
        let close = self.dir.join(CLOSE_SENTINEL);
        if close.exists() {
            let _ = std::fs::remove_file(&close);
            return Some(Input::Close);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn drop_file(dir: &Path, name: &str, content: &str) {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(tmp, dir.join(name)).expect("rename");
    }

    #[tokio::test]
    async fn delivers_follow_ups_in_order_then_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop_file(
            dir.path(),
            "1-000001.json",
            r#"{"type":"message","text":"already there"}"#,
        );
        let mut inbox = Inbox::open(dir.path()).expect("watch");
        assert_eq!(
            inbox.next().await,
            Some(Input::Message("already there".into()))
        );
        let waiting = tokio::spawn(async move {
            let a = inbox.next().await;
            let b = inbox.next().await;
            let c = inbox.next().await;
            (a, b, c)
        });
        drop_file(
            dir.path(),
            "2-000002.json",
            r#"{"type":"message","text":"second"}"#,
        );
        drop_file(dir.path(), "2-000003.json", "not json");
        drop_file(
            dir.path(),
            "3-000004.json",
            r#"{"type":"message","text":"third"}"#,
        );
        std::fs::write(dir.path().join(CLOSE_SENTINEL), "").expect("close");
        let (a, b, c) = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("arrives via inotify")
            .expect("task");
        assert_eq!(a, Some(Input::Message("second".into())));
        assert_eq!(
            b,
            Some(Input::Message("third".into())),
            "a bad file is skipped"
        );
        assert_eq!(
            c,
            Some(Input::Close),
            "close comes after pending follow-ups"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read").count(),
            0,
            "consumed"
        );
    }
}
