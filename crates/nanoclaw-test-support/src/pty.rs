//! A program under a pseudo-terminal, driven like a person at a keyboard: wait for a
//! prompt, type an answer. The program sees a real terminal (`isatty`, termios, echo),
//! so what it hides and what it shows is what a person would see.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: std::fs::File,
    pub child: std::process::Child,
    screen: Arc<Mutex<Vec<u8>>>,
    /// How much of the screen an `expect` has consumed.
    seen: usize,
}

impl Pty {
    /// Starts `cmd` with a new terminal as its stdin, stdout, stderr and controlling tty.
    pub fn spawn(mut cmd: std::process::Command) -> std::io::Result<Pty> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master: OwnedFd =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave: OwnedFd = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
            rustix::fs::Mode::empty(),
        )?;
        cmd.stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        // SAFETY: only async-signal-safe system calls run between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(cmd);
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program and every copy of the terminal are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.extend_from_slice(&buf[..n]);
            }
        });
        Ok(Pty {
            master,
            child,
            screen,
            seen: 0,
        })
    }

    /// Everything the program printed so far.
    pub fn screen(&self) -> String {
        // Decoded whole, so a character split between two reads stays one character.
        let bytes = self.screen.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until `text` appears after what earlier calls consumed; consumes up to it.
    pub fn expect(&mut self, text: &str, within: Duration) {
        let until = Instant::now() + within;
        loop {
            let screen = self.screen();
            if let Some(at) = screen.get(self.seen..).and_then(|rest| rest.find(text)) {
                self.seen += at + text.len();
                return;
            }
            if Instant::now() >= until {
                panic!(
                    "no {text:?} within {within:?}; the terminal after the last answer:\n{}",
                    screen.get(self.seen..).unwrap_or("")
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let screen = self.screen();
                if !screen[self.seen..].contains(text) {
                    panic!(
                        "the program ended ({status}) without printing {text:?}; after the last answer:\n{}",
                        &screen[self.seen..]
                    );
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `line` and Enter.
    pub fn send_line(&mut self, line: &str) {
        let typed = format!("{line}\r");
        self.master
            .write_all(typed.as_bytes())
            .expect("write to the terminal");
    }

    /// Types raw bytes (a control key: `\x03` is Ctrl-C).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the terminal");
    }

    /// Whether the terminal echoes what is typed (as a shell needs it to, afterwards).
    pub fn echo_is_on(&self) -> bool {
        rustix::termios::tcgetattr(&self.master)
            .map(|t| t.local_modes.contains(rustix::termios::LocalModes::ECHO))
            .unwrap_or(false)
    }

    /// Waits for the program to end.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                panic!(
                    "the program did not end within {within:?}:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
